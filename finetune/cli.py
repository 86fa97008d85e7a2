"""``avvp-finetune``: train, validate, test and predict with the AVVP parser.

Examples::

    avvp-finetune fit                                  # default model on the embedded synthetic set
    avvp-finetune test --ckpt_path best                # scores + predictions of the best checkpoint
    avvp-finetune fit --config han.yaml --data.root /data/llp
"""

from __future__ import annotations

from typing import Any, Optional

from pytorch_lightning.cli import ArgsType

from avvp_lightning.cli import AVVPCLI, command_line_errors
from avvp_lightning.data.datamodules import LLPDataModule
from avvp_lightning.finetune.module import ParserModule


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
                            help="torch.compile the parser's encoder layers, pooling and discriminator in "
                                 "place (checkpoints unchanged). Off by default: on the 2-core development "
                                 "CPU it did not pay off (benchmarks/README.md); meant for GPUs, where "
                                 "small kernels dominate a step. Dropout inside compiled blocks is "
                                 "torch's own (other random draws on the CPU).")
        parser.add_argument("--run.compile_mode", type=Optional[str], default=None,
                            help="torch.compile mode with --run.compile, e.g. reduce-overhead (CUDA graphs) "
                                 "or max-autotune; default: torch's default mode.")
        parser.add_argument("--run.compile_backend", type=str, default="inductor",
                            help="torch.compile backend with --run.compile (inductor; eager or aot_eager "
                                 "to debug).")

    def start_run(self) -> None:
        super().start_run()
        cfg = self.config[self.subcommand].run
        if cfg.compile:
            self.model.parser.compile_blocks(backend=cfg.compile_backend, mode=cfg.compile_mode)



def main(args: ArgsType = None) -> None:
    """Run ``avvp-finetune``; ``args`` as on the command line (default ``sys.argv[1:]``).

    From the command line (no ``args``) a data or checkpoint problem is one ``error:`` line on
    stderr and exit status 2; called with ``args`` the :class:`DataError` propagates.
    """
    with command_line_errors(args, "avvp-finetune"):
        FinetuneCLI(ParserModule, LLPDataModule, args=args)


if __name__ == "__main__":
    main()
