"""The package version, in a leaf module: every layer may read it without importing the
package's root (whose lazy public API sits above everything)."""

__version__ = "0.1.0"
