"""Help conventions every ``napari-nrf`` command follows, applied once to the whole parser
tree (:func:`finish`): every option's help shows its default, and every command's help
ends with an example. A module may pass its own ``epilog="example:\\n  napari-nrf ..."``
to ``add_parser``; otherwise the example comes from :data:`EXAMPLES`.
tests/test_cli_help.py walks the tree and fails on a command or option that breaks them.
"""

from __future__ import annotations

import argparse

# One runnable line (or two) per command, as a user would type it.
EXAMPLES = {
    "demo": "napari-nrf demo",
    "info": "napari-nrf info --json",
    "import-nsd": "napari-nrf import-nsd /data/nsd --subjects 1 2 --out responses/ --image-size 224",
    "import-nifti": "napari-nrf import-nifti betas.nii.gz --mask roi.nii.gz --events events.csv --out sub-01.h5",
    "import-official-nrf": "napari-nrf import-official-nrf runs/exp1 --out nrf_official.safetensors "
                           "--coords responses/subj01.h5",
    "train": "napari-nrf simulate --subjects 2 --images 300 --max-voxels 4000 --out data\n"
             "  napari-nrf train data/sub-01.h5 data/sub-02.h5 --out nrf.safetensors\n"
             "  napari-nrf train data/sub-01.h5 --config nrf.safetensors.config.toml --out nrf2.safetensors",
    "evaluate": "napari-nrf evaluate nrf.safetensors data/sub-01.h5 data/sub-02.h5 --stdout-json",
    "query": "napari-nrf query nrf.safetensors cat.png more_images/ --resolution 1 --mask data --out volumes/",
    "train-universal": "napari-nrf train-universal data/sub-01.h5 data/sub-02.h5 --out uni.safetensors",
    "transfer": "napari-nrf transfer uni.safetensors data/sub-03.h5 --out uni3.safetensors",
    "cluster": "napari-nrf cluster uni.safetensors -k 8 --out maps/",
    "simulate": "napari-nrf simulate --subjects 4 --images 1000 --out sim/",
    "finetune": "napari-nrf finetune --base A.safetensors B.safetensors --data new.h5 --out new.safetensors",
    "jobs": "napari-nrf jobs list --json",
    "simulate-movie": "napari-nrf simulate-movie --out movies/ --subjects 3 --films 3 --trs 120",
    "import-movie": "napari-nrf import-movie clip.mp4 --bold sub-01_bold.nii.gz --tr 1.5 --out movies/clip.h5",
    "train-movie": "napari-nrf train-movie movies/group.h5 --out movie.safetensors --size demo",
    "evaluate-movie": "napari-nrf evaluate-movie movie.safetensors movies/group.h5 --stdout-json",
    "query-movie": "napari-nrf query-movie movie.safetensors clip.mp4 --out pred.nii.gz",
    "rest-map": "napari-nrf rest-map sub-01_task-rest_bold.nii.gz --tr 1.6 --out sub-01_rest.nii.gz",
    "attach-rest": "napari-nrf attach-rest sub-01.h5 sub-01_ses-01_rest.nii.gz sub-01_ses-02_rest.nii.gz",
    "simulate-rest": "napari-nrf simulate-rest --subjects 6 --out sim/",
    "train-rest2visual": "napari-nrf train-rest2visual sim/sub-0*.h5 --out r2v.safetensors",
    "evaluate-rest2visual": "napari-nrf evaluate-rest2visual r2v.safetensors sim/sub-06.h5 --stdout-json",
    "card": "napari-nrf card nrf.safetensors --out nrf.card.md",
}


class Formatter(argparse.HelpFormatter):
    """argparse's formatter, except that an epilog starting with "example" keeps its lines."""

    def _fill_text(self, text, width, indent):
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def shows_default(action: argparse.Action) -> bool:
    """Whether an option has a default worth showing that its help does not show yet."""
    d = action.default
    if d is None or d is False or d is argparse.SUPPRESS or not action.option_strings:
        return False
    return "default" not in (action.help or "").lower()


def subcommands(parser: argparse.ArgumentParser):
    """(name, parser) of every command below ``parser``, nested ones as "a b"."""
    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            for name, sp in act.choices.items():
                yield name, sp
                for sub, ssp in subcommands(sp):
                    yield f"{name} {sub}", ssp


def finish(parser: argparse.ArgumentParser) -> None:
    """Defaults into help strings, examples into epilogs, for every command below ``parser``."""
    for name, sp in subcommands(parser):
        sp.formatter_class = Formatter
        if not sp.epilog and name in EXAMPLES:
            sp.epilog = "example:\n  " + EXAMPLES[name].replace("%", "%%")
        for act in sp._actions:
            if act.help and act.help is not argparse.SUPPRESS and shows_default(act):
                act.help += " (default: %(default)s)"
