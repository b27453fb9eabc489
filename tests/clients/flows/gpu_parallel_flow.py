"""A GPU step and a distributed (@parallel) step: pods asking for nvidia.com/gpu, and a JobSet."""

from metaflow import FlowSpec, kubernetes, parallel, step


class GpuParallelFlow(FlowSpec):
    @kubernetes(gpu=1)
    @step
    def start(self) -> None:
        self.next(self.train, num_parallel=2)

    @kubernetes
    @parallel
    @step
    def train(self) -> None:
        self.next(self.join)

    @step
    def join(self, inputs: object) -> None:
        self.next(self.end)

    @step
    def end(self) -> None:
        pass


if __name__ == "__main__":
    GpuParallelFlow()
