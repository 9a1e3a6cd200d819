from simulations.bench_dp_cost import Case, cost_table, default_table


def _result(step_s: float, peak_mib: float) -> dict[str, float]:
    return {"step_s": step_s, "wall_step_s": 2 * step_s, "peak_mib": peak_mib, "growth_mib": 1.0}


def test_tables_pick_the_fastest_dp_mode_and_divide_by_the_same_run():
    results = {
        Case("full", 16, 64, "non-dp"): _result(1.0, 1000.0),
        Case("full", 16, 64, "ghost"): _result(2.0, 1200.0),
        Case("full", 16, 64, "bookkeeping"): _result(1.25, 1400.0),
        Case("full-frozen", 16, 64, "bookkeeping"): _result(1.1, 1100.0),
    }
    table = cost_table(results, ("full",))
    row = table.splitlines()[2]
    assert row.startswith("| MiniLM full | 16 | 64 | 1.00 | - | 2.00 | 1.25 | bookkeeping | 1.25x")
    assert "| 1.40x |" in row  # memory of the fastest mode: 1400 / 1000
    assert "time <= 1.3x: yes; memory <= 1.3x: **no**" in row
    assert len(table.splitlines()) == 3  # cases not measured (B=64, L=128) are left out
    default = default_table(results).splitlines()[2]
    assert default == "| 16 | 64 | 1.00 | 1.10 | 1.10x | 1000 / 1100 | 1.10x |"
