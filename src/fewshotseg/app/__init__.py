"""`fewshotseg serve`: a web page to label, adapt and segment your own images (the `app` extra: Gradio).

`workspace` holds one session's work and needs no web library; `page` is the Gradio page over it; `serve` launches
it safely."""
