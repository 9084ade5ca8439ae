import pytest

from pipeline.ranks import detect_rank


def test_single_process_by_default():
    info = detect_rank({})
    assert (info.rank, info.world_size, info.source) == (0, 1, "single")


def test_torchrun_variables_win():
    info = detect_rank(
        {"RANK": "3", "WORLD_SIZE": "4", "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    )
    assert (info.rank, info.world_size, info.source) == (3, 4, "torchrun")


def test_slurm_array_is_relative_to_its_first_index():
    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}
    info = detect_rank(env)
    assert (info.rank, info.world_size) == (2, 4)
    assert [s for s in range(10) if info.owns(s)] == [2, 6]


def test_rank_outside_world_is_refused():
    with pytest.raises(ValueError, match="outside world size"):
        detect_rank({"RANK": "4", "WORLD_SIZE": "4"})
