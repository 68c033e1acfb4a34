"""A rich progress bar that counts images, on stderr so stdout stays clean for --json/--csv."""


class progress_bar:
    """A rich progress bar that counts images; silent when disabled."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.total, self.description, self.enabled = total, description, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda n, total=None: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total or None)

        def update(n, total=None):
            if total is None:
                self._bar.advance(task, n)
            else:  # absolute progress: n of total done
                self._bar.update(task, completed=n, total=total)

        return update

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False
