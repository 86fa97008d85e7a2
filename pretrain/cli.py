"""``avvp-pretrain``: audio-visual grounding pretraining and feature export.

Examples::

    avvp-pretrain fit --config pretrain_multi.yaml             # embedded synthetic snippets
    avvp-pretrain fit --config pretrain_multi.yaml --data.root /data/audioset_snippets
    avvp-pretrain export --ckpt_path outputs/pretrain/pretrain_multi/seed0/checkpoints/last.ckpt \\
        --root /data/llp --out_name pretrain_multi    # writes feats/pretrain_multi_{audio,visual}/
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pytorch_lightning.cli import ArgsType

from avvp_lightning.checkpointing import checkpoint_kind, load_checkpoint
from avvp_lightning.cli import AVVPCLI, command_line_errors
from avvp_lightning.data.datamodules import SnippetDataModule
from avvp_lightning.errors import DataError
from avvp_lightning.pretrain.module import PretrainModule


class PretrainCLI(AVVPCLI):
    stage = "pretrain"
    lr_option = "--model.lr"
    job_prefix = "pretrain-"  # W&B: an encoder's runs apart from the finetune row of the same name
    monitor, monitor_mode = "val/loss", "min"
    description = (
        "Pretrain a UNITER-style audio-visual transformer with grounding losses (uni / cross / multi), "
        "then export its contextualized features for finetuning (avvp-pretrain export --help)."
    )
    epilog = (
        "A third subcommand, handled apart from the two above: avvp-pretrain export --ckpt_path CKPT "
        "--out_name NAME [--root LLP_ROOT] writes a pretrained checkpoint's contextualized features of "
        "every LLP video (avvp-pretrain export --help)."
    )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: snippets have no test split and no predictions (``export`` writes features)."""
        return {name: args for name, args in AVVPCLI.subcommands().items() if name in ("fit", "validate")}

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        for dim in ("audio_dim", "visual_dim", "num_segments"):
            parser.link_arguments(f"data.{dim}", f"model.{dim}")



def export_main(args: list[str]) -> None:
    """``avvp-pretrain export``: write contextualized features of every LLP video."""
    from avvp_lightning.pretrain.export import export_features

    parser = argparse.ArgumentParser(
        prog="avvp-pretrain export",
        description="Run a pretrained checkpoint over an LLP root and write its contextualized audio and "
        "visual snippet embeddings as feature folders <root>/feats/<out_name>_audio/ and _visual/ "
        "(one <id>.npy of shape (10, hidden) per video), which avvp-finetune reads with "
        "--config pretrain_<variant>.yaml.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by avvp-pretrain fit")
    parser.add_argument("--root", default=None,
                        help="LLP root (official layout); default: the embedded synthetic LLP set")
    parser.add_argument("--out_name", required=True, help="feature folder prefix, e.g. pretrain_multi")
    parser.add_argument("--audio_dir", default="feats/vggish",
                        help="input audio features, relative to --root, as the checkpoint was pretrained on "
                             "(default: feats/vggish)")
    parser.add_argument("--visual_dir", default="feats/res152",
                        help="input visual features, relative to --root; frames are mean-pooled to segments "
                             "(default: feats/res152)")
    parser.add_argument("--batch_size", type=int, default=64, help="videos per forward pass (default: 64)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the folders of an earlier export of the same --out_name (they are replaced "
                             "only when the new export is complete)")
    ns = parser.parse_args(args)
    checkpoint = load_checkpoint(ns.ckpt_path)  # DataError: missing, unreadable, or the other stage's
    if not any(name.startswith("encoder.") for name in checkpoint["state_dict"]):
        raise DataError(f"{ns.ckpt_path}: this is {checkpoint_kind(checkpoint['state_dict'])}, but export needs a "
                        "pretrain checkpoint (avvp-pretrain fit)")
    del checkpoint
    if ns.root is None:
        from avvp_lightning.data.synthetic import default_root

        ns.root = str(default_root("llp"))
    audio, visual = export_features(
        ns.ckpt_path, ns.root, out_name=ns.out_name, audio_dir=ns.audio_dir, visual_dir=ns.visual_dir,
        batch_size=ns.batch_size, device=ns.device, overwrite=ns.overwrite,
    )
    print(f"wrote {audio} and {visual}")


def main(args: ArgsType = None) -> None:
    """Run ``avvp-pretrain``; ``args`` as on the command line (default ``sys.argv[1:]``).

    From the command line (no ``args``) a data or checkpoint problem is one ``error:`` line on
    stderr and exit status 2; called with ``args`` the :class:`DataError` propagates.
    """
    argv = list(sys.argv[1:] if args is None else args)
    with command_line_errors(args, "avvp-pretrain"):
        if argv[:1] == ["export"]:
            export_main([str(a) for a in argv[1:]])
            return
        PretrainCLI(PretrainModule, SnippetDataModule, args=args)


if __name__ == "__main__":
    main()
