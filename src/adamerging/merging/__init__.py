"""The merge: task vectors and THE formula theta_0 + sum_t lambda_t tau_t (`task_vectors`), TIES
selection (`ties`), the coefficient tables (`tables`), the merged encoder every method is evaluated
through (`encoder`), and the task vectors' norms and cosines (`stats`)."""
