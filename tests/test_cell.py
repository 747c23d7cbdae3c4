"""One resolved cell: options parsed once, the run id from what they resolve to, and a study's
folders under a spelled-out id read as the same cell (by the grid and by the report)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from bench.config import to_dict
from bench.run.cells import load_grid, load_run_config
from tests.harness import cell_of

# Ids the previous version gave these configs (main before ids came from resolved options):
# a cell that leaves its options unset keeps its id, and so does one that spells only
# non-default values.
EARLIER_IDS = {"full_sft": ("full_sft-6b7ea2755d", {}), "epi": ("epi-ff1ba96cc7", {}),
               "epi rho=0.02": ("epi-e2e0700849", {"rho": 0.02})}


def epi(options: dict) -> object:
    return cell_of({"method": {"name": "epi", "options": options}})


def test_one_id_for_every_spelling_of_epi_at_its_defaults():
    spellings = [{}, {"rho": 0.01}, {"beta": 0.9}, {"rho": 0.01, "beta": 0.9, "refresh_every": 50}]
    ids = {epi(options).run_id for options in spellings}
    assert ids == {EARLIER_IDS["epi"][0]}
    assert epi({"rho": 0.02}).run_id == EARLIER_IDS["epi rho=0.02"][0]  # another science, another id
    assert epi({"rho": 0.01}).spelled_id == "epi-530899035d"  # the id the earlier version gave that spelling


@pytest.mark.parametrize("label", list(EARLIER_IDS))
def test_cells_without_spelled_defaults_keep_their_earlier_ids(label):
    run_id, options = EARLIER_IDS[label]
    cell = cell_of({"method": {"name": run_id.split("-")[0], "options": options}})
    assert cell.run_id == run_id == cell.spelled_id


def test_tables_that_switch_something_on_hash_every_field():
    """Retention at its defaults is the unset cell; an analysis switched on is never the one left off."""
    assert cell_of({"eval": {"retention": {"rows": 32}}}).run_id == EARLIER_IDS["full_sft"][0]
    on = cell_of({"analysis": {"gradient_conflict": {"every": 10}}})
    assert on.run_id != EARLIER_IDS["full_sft"][0]
    assert on.canonical()["analysis"]["gradient_conflict"]["every"] == 10
    assert on.run_id == cell_of({"analysis": {"gradient_conflict": on.canonical()["analysis"]["gradient_conflict"]}}).run_id


def test_a_sweep_over_the_default_reuses_the_default_cell(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(f'results_dir = {str(tmp_path)!r}\n[grid]\nmethods = ["epi"]\n'
                    '[grid.method_options.epi]\nrho = [0.005, 0.01, 0.02]\n')
    ids = [c.run_id for c in load_grid(path).cells]
    assert EARLIER_IDS["epi"][0] in ids and EARLIER_IDS["epi rho=0.02"][0] in ids and len(set(ids)) == 3


def test_each_option_table_is_parsed_once_per_cell(tmp_path, monkeypatch):
    """Resolving, planning (memory and cost) and running a cell build each options class once."""
    from bench.launch.dry_run import describe
    from bench.run.execution import execute
    from pluggable import options

    counts: collections.Counter[str] = collections.Counter()
    real = options.build

    def counting(cls, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        counts[cls.__qualname__] += 1
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(options, "build", counting)
    path = tmp_path / "run.toml"
    path.write_text(f'study = "s"\nresults_dir = {str(tmp_path / "results")!r}\n'
                    '[tasks]\nnames = ["arithmetic"]\ntrain_size = 8\ntest_size = 2\n'
                    '[train]\nsteps_per_stage = 1\nbatch_size = 2\nwarmup_steps = 0\n'
                    '[eval]\nlimit = 2\nretention = { rows = 2, tokens = 16 }\n'
                    '[method]\nname = "epi"\noptions = { rho = 0.05 }\n'
                    '[analysis]\ngradient_conflict = { every = 1, batches = 1 }\n')
    cell = load_run_config(path)
    parsed = dict(counts)
    assert {"EPIConfig", "RetentionOptions", "ConflictOptions", "RunConfig"} <= set(parsed)
    assert set(parsed.values()) == {1}
    from bench.run.cells import Grid, GridSpec

    describe(Grid(path, GridSpec(), [cell]))
    result = execute(cell, progress=False)
    assert result.ok, result.run.error
    assert dict(counts) == parsed  # nothing parsed again


def _success(cell: object, folder: str, spelled: bool) -> None:
    """A successful multitask result of ``cell`` in ``<study>/<folder>``, as the earlier version
    (``spelled``: the config as written, under its spelled-out id) or this one wrote it."""
    from bench.run import results as res
    from bench.run.status import new_run_info
    from reports.schema import Evaluation, Result, StageResult

    run = new_run_info(cell)
    run.status, run.run_id = "success", folder
    if spelled:
        run.config = to_dict(cell.config)
    tasks = list(cell.tasks.names)
    stage = StageResult(stage=0, trained_on=tasks, scores={t: 50.0 + cell.seed for t in tasks},
                        nll={t: 1.0 for t in tasks}, steps_done=1)
    evaluation = Evaluation(base={t: {"score": 10.0, "nll": 2.0} for t in tasks}, stages=[stage],
                            chance={t: 0.0 for t in tasks})
    (cell.study_dir / folder).mkdir(parents=True)
    res.write_result(cell.study_dir / folder, Result(run=run, evaluation=evaluation, provenance=res.provenance()))


def grid_of(tmp_path: Path, options: str, seeds: str = "[0, 1]") -> Path:
    path = tmp_path / "g.toml"
    path.write_text(f'study = "g"\nresults_dir = {str(tmp_path / "results")!r}\n[tasks]\nnames = ["arithmetic"]\n'
                    f'[grid]\nmethods = ["epi"]\nseeds = {seeds}\n[grid.method_options.epi]\n{options}\n')
    return path


def test_a_cell_whose_spelled_out_twin_succeeded_is_not_run_again(tmp_path):
    from bench.run.status import cell_status, done_result, twin_index

    spelled = load_grid(grid_of(tmp_path, "rho = 0.01", "[0]")).cells[0]
    assert spelled.spelled_id != spelled.run_id
    _success(spelled, spelled.spelled_id, spelled=True)
    assert cell_status(spelled) == "success" and done_result(spelled) is not None  # by its own spelling
    unset = load_grid(grid_of(tmp_path, "beta = 0.9", "[0]")).cells[0]  # another spelling of the same cell
    assert unset.run_id == spelled.run_id
    assert cell_status(unset) == "missing"  # its own spelled id is not the folder's...
    index = twin_index(unset.study_dir)
    assert index == {unset.run_id: [unset.study_dir / spelled.spelled_id]}
    assert cell_status(unset, index) == "success" and done_result(unset, index).run.seed == 0  # ...the index finds it


def test_a_study_holding_both_spellings_reports_one_row(tmp_path):
    """Seed 0 under the earlier, spelled-out id and again under the canonical id, seed 1 under
    the canonical id: one cell per seed, one row of two seeds."""
    from bench.launch.manifest import write_manifest
    from bench.run.status import twin_index
    from reports.load import load_study
    from reports.report import report

    old = load_grid(grid_of(tmp_path, "rho = 0.01"))
    _success(old.cells[0], old.cells[0].spelled_id, spelled=True)
    grid = load_grid(grid_of(tmp_path, "beta = 0.9"))
    _success(grid.cells[0], grid.cells[0].run_id, spelled=False)
    _success(grid.cells[1], grid.cells[1].run_id, spelled=False)
    before = load_study(grid.study_dir)
    assert len(before) == 3 and len({r.variant for r in before}) == 2  # without the grid's manifest: two configs
    write_manifest(grid, twin_index(grid.study_dir))
    assert json.loads((grid.study_dir / "grid.json").read_text())["twins"] == {old.cells[0].spelled_id:
                                                                             grid.cells[0].run_id}
    runs = load_study(grid.study_dir)
    assert sorted((r.run_id, r.seed) for r in runs) == sorted((c.run_id, c.seed) for c in grid.cells)
    assert {r.variant for r in runs} == {""}  # one config: seeds of one row
    report(grid.study_dir)
    rows = [line for line in (grid.study_dir / "tables" / "main_multitask.md").read_text().splitlines() if "epi" in line]
    assert len(rows) == 1 and "2/2" in rows[0], rows


def test_a_method_that_is_full_sft_in_one_stage_is_refused_there_and_not_crossed_with_it(tmp_path):
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="'replay' needs at least 2 stages .* regime 'multitask' makes 1"):
        cell_of({"method": {"name": "replay"}, "regime": "multitask"})
    assert cell_of({"method": {"name": "replay"}, "regime": "sequential"}).method_name == "replay"
    path = tmp_path / "g.toml"
    path.write_text(f'results_dir = {str(tmp_path)!r}\n[grid]\nmethods = ["full_sft", "ewc"]\n'
                    'regimes = ["multitask", "sequential"]\n')
    assert sorted((c.method_name, c.regime) for c in load_grid(path).cells) == [
        ("ewc", "sequential"), ("full_sft", "multitask"), ("full_sft", "sequential")]
