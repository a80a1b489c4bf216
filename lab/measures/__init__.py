"""Progress measures: token-level losses and scores (`losses`) and per-head measures with the one
helper every task calls (`heads`)."""
