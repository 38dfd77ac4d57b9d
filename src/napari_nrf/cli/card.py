"""Subcommand ``card``: a bundle's model card in Markdown (napari_nrf.card)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("card", help="print or write a model's card (Markdown): data, training, metrics, "
                                    "intended use, caveats")
    p.add_argument("model", help="model bundle (.safetensors)")
    p.add_argument("--out", metavar="MD", help="write the card to this Markdown file (default: print it)")
    p.set_defaults(func=_card)


def _card(args) -> int:
    from napari_nrf.card import model_card_markdown
    from napari_nrf.errors import check_output, write_text_atomic

    if args.out:
        check_output(args.out, [args.model], overwrite=args.overwrite)
    text = model_card_markdown(args.model)
    if args.out:
        write_text_atomic(args.out, text)
        print(f"card: {args.out}")
    else:
        print(text, end="")
    return 0
