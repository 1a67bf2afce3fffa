"""User-facing applications built on nanoeval (the Gradio side-by-side demo lives in `apps.demo`)."""
