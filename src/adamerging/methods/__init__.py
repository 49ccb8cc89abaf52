"""The methods that compute merged weights: AdaMerging (`adamerging`), the data-based merges
(`fisher`, `regmean`), and the entropy diagnostics that say whether AdaMerging will help
(`diagnostics/`)."""
