"""``avvp-finetune``: train, validate, test and predict with the AVVP parser.

Examples::

    avvp-finetune fit                                  # default model on the embedded synthetic set
    avvp-finetune test --ckpt_path best                # scores + predictions of the best checkpoint
    avvp-finetune fit --config han.yaml --data.root /data/llp
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.cli import ArgsType

from avvp_lightning.cli import AVVPCLI, command_line_errors
from avvp_lightning.data.datamodules import LLPDataModule
from avvp_lightning.finetune.module import ParserModule

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class CompileBlocks(Callback):
    """Compiles the parser's blocks (:meth:`AVVPParser.compile_blocks`) when fitting starts.

    A callback, so that it runs in every training process: ``ddp_spawn`` pickles the model into
    its workers, and pickling drops a module's compiled forward. Dynamo's caches are reset first:
    the runs of a sweep (``avvp-ablate``) share one process, and their models' graphs would
    otherwise add up to dynamo's recompile limit, after which a block silently runs eagerly.

    Args:
        backend: ``torch.compile`` backend.
        mode: ``torch.compile`` mode (None: torch's default).
    """

    def __init__(self, backend: str = "inductor", mode: Optional[str] = None) -> None:
        self.backend, self.mode = backend, mode

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:  # noqa: D102
        if stage == "fit":
            torch._dynamo.reset()
            pl_module.parser.compile_blocks(backend=self.backend, mode=self.mode)


class FinetuneCLI(AVVPCLI):
    stage = "finetune"
    monitor, monitor_mode = "val/segment/type", "max"  # best validation segment Type@AV, as HAN
    auto_precision = True  # bf16-mixed where native: same test metrics within seed noise (benchmarks/README.md)
    description = "Train and evaluate audio-visual video parsers on LLP (weak labels) with exact HAN metrics."

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        for dim in ("audio_dim", "visual_dim", "motion_dim"):
            parser.link_arguments(f"data.{dim}", f"model.{dim}")
        parser.add_argument("--run.compile", type=bool, default=False,
                            help="fit only: torch.compile the parser's encoder layers, pooling and "
                                 "discriminator in place, in every process (checkpoints unchanged; "
                                 "validate/test/predict run eagerly). Off by default: on a small CPU "
                                 "compilation takes minutes and did not pay off (benchmarks/README.md); "
                                 "meant for GPUs, where the model's many small kernels dominate a step. "
                                 "Dropout inside compiled blocks is torch's own (other random draws on "
                                 "the CPU).")
        parser.add_argument("--run.compile_mode", type=Optional[CompileMode], default=None,
                            help="torch.compile mode with --run.compile: reduce-overhead adds CUDA graphs; "
                                 "default: torch's default mode.")
        parser.add_argument("--run.compile_backend", type=str, default="inductor",
                            help="torch.compile backend with --run.compile (inductor; eager or aot_eager "
                                 "to debug).")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        run = self.config[self.subcommand].run
        if self.subcommand == "fit" and run.compile:
            trainer.callbacks.append(CompileBlocks(run.compile_backend, run.compile_mode))
        return trainer


def main(args: ArgsType = None) -> None:
    """Run ``avvp-finetune``; ``args`` as on the command line (default ``sys.argv[1:]``).

    From the command line (no ``args``) a data or checkpoint problem is one ``error:`` line on
    stderr and exit status 2; called with ``args`` the :class:`DataError` propagates.
    """
    with command_line_errors(args, "avvp-finetune"):
        FinetuneCLI(ParserModule, LLPDataModule, args=args)


if __name__ == "__main__":
    main()
