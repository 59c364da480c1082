"""A run logger writing every logged scalar as a `step,key,value` row of `runs/<name>/scalars.csv`."""

from __future__ import annotations

import csv

from multimae_cli import Logger, hookimpl

MULTIMAE_API = 3


class CsvWriter:
    def __init__(self, run, settings) -> None:
        path = run / "scalars.csv"
        new = not path.exists()
        self.file = path.open("a", newline="")
        self.rows = csv.writer(self.file)
        if new:
            self.rows.writerow(["step", "key", "value"])

    def scalars(self, step, values) -> None:
        self.rows.writerows([step, key, value] for key, value in values.items())
        self.file.flush()  # `tail -f` sees each logging step as it happens

    def image(self, step, tag, image) -> None:
        pass  # nothing to do: a CSV file keeps numbers only

    def close(self) -> None:
        self.file.close()


@hookimpl
def register_loggers(register):
    register(Logger(name="csv", open=CsvWriter, description="every logged scalar as a row of runs/<name>/scalars.csv"))
