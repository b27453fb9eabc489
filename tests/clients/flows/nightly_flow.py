"""A scheduled flow that an event can also start: WorkflowTemplate, CronWorkflow and Sensor."""

from metaflow import FlowSpec, kubernetes, schedule, step, trigger


@trigger(event="data-ready")
@schedule(daily=True)
class NightlyFlow(FlowSpec):
    @kubernetes(cpu=1, memory=2048)
    @step
    def start(self) -> None:
        self.next(self.end)

    @step
    def end(self) -> None:
        pass


if __name__ == "__main__":
    NightlyFlow()
