"""A scheduled flow for Airflow (which takes @schedule, not @trigger)."""

from metaflow import FlowSpec, kubernetes, schedule, step


@schedule(daily=True)
class DailyFlow(FlowSpec):
    @kubernetes(cpu=1, memory=2048)
    @step
    def start(self) -> None:
        self.next(self.end)

    @step
    def end(self) -> None:
        pass


if __name__ == "__main__":
    DailyFlow()
