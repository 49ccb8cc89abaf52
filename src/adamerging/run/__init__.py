"""What a run is made of: its typed configuration (`config`), the task list and users' tasks
(`tasks`), the experts and their checks (`experts`, `provenance`), the heads (`heads`), the loaded
problem every method runs on (`problem`), and the train-split sample of the data-based merges
(`train_data`)."""
