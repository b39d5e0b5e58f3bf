"""The browser half: thin function views (labeling, campaign pages, admin pages, compression), forms, urls.
Views fetch through `annotate.access`, call one service function, and render."""
