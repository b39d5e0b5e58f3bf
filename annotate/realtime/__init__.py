"""Live events: what is published after a write commits (`events`), the websocket consumers that forward
them to members' browsers, and their routing."""
