"""Reading judgements into figures: rankings, agreement, Bradley–Terry strengths, the dashboard and its
plots, per-labeler statistics. Reads only."""
