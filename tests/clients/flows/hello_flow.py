"""Two steps and an artifact: the smallest flow that writes to the datastore."""

from metaflow import FlowSpec, step


class HelloFlow(FlowSpec):
    @step
    def start(self) -> None:
        self.greeting = "hello from the gs datastore"
        self.next(self.end)

    @step
    def end(self) -> None:
        print(self.greeting)


if __name__ == "__main__":
    HelloFlow()
