"""ssondo_distill: students, losses, the balanced stream, the trainer, export."""
