"""The datasets: the tasks and their facts (`tasks`), one reader per layout (`readers`,
`hf_copies`, `user_tasks`), the split policy and the reading of a task's split (`splits`), class
names, prompts and label mapping (`labels`), preprocessing with its cache (`preprocessing`),
test-image corruptions, and the prepare and download commands."""
