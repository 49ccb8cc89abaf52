"""The models: the open_clip CLIP architectures with QuickGELU (`clip`, configs in `configs/`), the
zero-shot heads (`heads`), accuracy on a test split (`evaluation`) and the task-vectors pickle
format this repo writes (`task_vectors_format`)."""
