"""The built-in run logger: TensorBoard (`loggers: [tensorboard]`, `pip install 'multimae[tensorboard]'`).

Scalars and previews go to `runs/<name>/tensorboard/`, so `tensorboard --logdir runs` shows every run; a resumed
run appends to the same folder (TensorBoard draws the latest value of a repeated step).
"""

from __future__ import annotations

from multimae_cli import Logger, hookimpl


class TensorBoardWriter:
    def __init__(self, run, settings) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))
        self.writer.add_text("config", f"```yaml\n{_yaml(settings)}```", 0)

    def scalars(self, step, values) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def image(self, step, tag, image) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def _yaml(settings) -> str:
    import yaml

    return yaml.safe_dump(dict(settings), sort_keys=False)


@hookimpl
def register_loggers(register):
    register(Logger(name="tensorboard", open=TensorBoardWriter, requires=("tensorboard",),
                    install="multimae[tensorboard]",
                    description="scalars and previews as TensorBoard event files in runs/<name>/tensorboard/"))
