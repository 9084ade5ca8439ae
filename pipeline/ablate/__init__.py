"""`ssondo ablate`: a resumable grid of trainings and evaluations from one GRID.yaml.

grid.py    parse GRID.yaml, expand crossed axes and zip groups into cells, hash each resolved config
claims.py  per-unit claim files (atomic create, owner host/pid, heartbeat, staleness rule)
cells.py   one cell: train with the trainer, evaluate with the evaluation, record done / failed
launch.py  the grid: inputs made or refused, plan.json, local jobs, SLURM array, sbatch script
report.py  tables (Markdown, CSV, Parquet) and plots over the finished cells
"""
