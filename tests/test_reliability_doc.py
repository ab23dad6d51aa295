"""docs/reliability.md says, for each class of fault, how many kinds of fault its tests try and in how many test
cases. Both figures are computed here from the suite, so the page can say neither more nor less than the tests do.

Cases: the tests of the class's files as ``pytest --collect-only`` finds them.

Kinds: each fault test file names the faults it tries in a module-level dict ``FAULT_KINDS``: a kind's label (a
fault as the page's "what is tried" column words it) to the tests that try it, as patterns over a test's name in
its file (``*`` stands for any text; a pattern without ``[`` takes every parametrization of the test). A label
whose patterns hold ``{}`` is one kind for each text that ``{}`` stands for in the collected names (one kind per
parametrized fault, ``{}`` in the label replaced by that text). Tests that try no fault are named in a tuple
``NOT_FAULTS``. Every collected test must be named by a kind or by ``NOT_FAULTS``, and every pattern must name a
collected test: a fault test added, removed or renamed changes the count, and the page must follow. Labels are
counted once per row, so a kind tried in two files of one class is one kind.

Files whose kinds are not yet written in the file itself have them in ``KINDS_KEPT_HERE`` below (a file holds them
in one place or the other, never both).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO

Patterns = str | tuple[str, ...]

# The kinds of the files that do not list their own yet, in the format each file's FAULT_KINDS takes.
KINDS_KEPT_HERE: dict[str, dict[str, Patterns]] = {
    "tests/test_fault_files.py": {
        "snapshot file: {}": "test_hostile_snapshot_files[*-{}]",
        "a profiles folder holding unreadable files": "test_list_shows_hostile_files_as_unreadable_and_goes_on",
        "list of a file": "test_list_of_a_file_is_refused",
        "list of a missing folder": "test_list_of_a_missing_folder_says_so",
        "plan file: {}": "test_hostile_plan_files[{}]",
        "matrix file: {}": "test_hostile_matrix_files[{}]",
        "--input file: {}": "test_hostile_input_files[{}]",
        "export onto its input": "test_output_paths_that_would_fail_or_destroy[0]",
        "export onto its input, spelled otherwise": "test_output_paths_that_would_fail_or_destroy[1]",
        "export onto its input through a link": "test_output_paths_that_would_fail_or_destroy[2]",
        "export to a folder": "test_output_paths_that_would_fail_or_destroy[3]",
        "export under a file": "test_output_paths_that_would_fail_or_destroy[4]",
        "compare onto its first input": "test_output_paths_that_would_fail_or_destroy[5]",
        "compare onto its second input, through a link and spelled otherwise": "test_output_paths_that_would_fail_or_destroy[6]",
        "compare to a folder": "test_output_paths_that_would_fail_or_destroy[7]",
        "output onto a FIFO or a device": "test_output_onto_a_fifo_or_device_is_refused",
        "export of a matrix into its own manifest": "test_export_of_a_matrix_into_its_own_manifest_is_refused",
        "export of a matrix into its references": "test_export_of_a_matrix_into_its_references_is_refused",
        "charts written beside -o over an input": "test_charts_beside_the_output_never_replace_an_input",
        "a plan check in a plan file or a snapshot's plan": "test_a_plan_check_names_the_file_it_came_from",
        "schema_version: true": "test_schema_version_true_is_not_version_one",
        "a matrix file with an empty {} axis": "test_a_matrix_file_with_an_empty_axis_is_refused[{}]",
        "prompts given server options": "test_prompts_refuses_server_options_it_would_ignore",
        "a byte-order mark": "test_a_byte_order_mark_is_not_part_of_the_first_text",
        "a speed text that is a folder or a device": "test_a_speed_text_that_is_a_folder_says_so",
        "a reader that goes away": "test_a_reader_that_goes_away_is_not_an_error",
        "an ASCII-only terminal": "test_an_ascii_only_terminal_gets_escapes_not_a_traceback",
        "stdout closed": "test_closed_streams_are_one_line_or_the_status",
        "stderr closed": "test_closed_streams_are_one_line_or_the_status",
        "stdin closed": ("test_closed_streams_are_one_line_or_the_status", "test_stdin_closed_for_input_is_one_sentence"),
        "COLUMNS=0": "test_columns_zero_still_shows_the_tables",
        "the loader given any JSON": "test_loader_takes_any_json",
        "the loader given any damage to a real snapshot": "test_loader_takes_any_damage_to_a_real_snapshot",
        "the loader given any bytes": "test_loader_takes_any_bytes",
    },
    "tests/test_fault_servers.py": {
        "during a run: {}": ("test_a_fault_during_a_run_is_classified_and_saved[{}-openai*]",
                             "test_a_fault_during_a_run_is_classified_and_saved[{}-llama*]",
                             "test_every_fault_during_a_run_in_process[{}-openai*]", "test_every_fault_during_a_run_in_process[{}-llama*]"),
        "while connecting: {}": ("test_a_fault_while_connecting_is_one_sentence[{}-openai*]",
                                 "test_a_fault_while_connecting_is_one_sentence[{}-llama*]",
                                 "test_every_fault_while_connecting_in_process[{}-openai*]",
                                 "test_every_fault_while_connecting_in_process[{}-llama*]"),
        "odd but usable: {}": ("test_odd_but_usable_answers_complete[{}-openai*]", "test_odd_but_usable_answers_complete[{}-llama*]",
                               "test_every_usable_answer_in_process[{}-openai*]", "test_every_usable_answer_in_process[{}-llama*]"),
        "odd but usable: shuffled": ("test_indexes_in_any_order_are_put_in_order",
                                     "test_a_valid_answer_in_any_order_gives_its_rows_in_index_order"),
        "during a run: dimchange": "test_one_run_keeps_one_dimension_across_answers",
        "an endless body": "test_an_endless_answer_is_cut_at_the_read_limit",
        "token counts that are not whole numbers": "test_reported_tokens_are_whole_counts_or_unknown",
        "a server URL with a surrounding space": ("test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[ http*",
                                                  "test_a_pasted_space_or_a_query_in_the_url_is_one_sentence_on_the_command_line"),
        "a server URL ending in a line end": "test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[*8080\\n-*",
        "a server URL holding a tab": "test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[*\\t*",
        "a server URL with a query": ("test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[http://127.0.0.1:8080/?key=abc-*",
                                      "test_a_pasted_space_or_a_query_in_the_url_is_one_sentence_on_the_command_line"),
        "a server URL with an empty query": "test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[*8080?-*",
        "a server URL with a fragment": "test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[*#abc-*",
        "a server URL with credentials and a query": "test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[*alice:abc@*?key=*",
        "a server URL with a port out of range": "test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[*:99999-*",
        "a server URL with port 0": "test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence[*:0-*",
        "percent-encoded credentials": "test_url_credentials_are_percent_decoded_for_basic_auth",
        "all-zero vectors": ("test_a_zero_vector_scores_zero_without_a_warning_and_is_noted",
                             "test_a_server_of_zero_vectors_gives_a_readable_similarity_run"),
        "the answer parser given any JSON value": "test_any_json_value_parses_or_is_classified",
        "the answer parser given any near-valid answer": "test_any_near_valid_answer_parses_or_is_classified",
        "the answer parser given any answer as bytes, whole or cut": "test_any_answer_as_bytes_parses_or_is_classified",
        "the answer parser given any bytes": "test_any_bytes_parse_or_are_classified",
        "deep nesting": "test_deep_nesting_is_classified",
        "the model-list parser given any JSON": "test_any_model_list_gives_a_model_id_or_is_classified",
        "the error-body reader given any bytes": "test_any_error_body_gives_a_short_line",
        "the body decoder given any bytes": "test_any_bytes_decode_or_are_a_bad_body",
    },
    "tests/test_http_faults.py": {
        "while connecting: refused": "test_connection_refused_and_dns_get_one_sentence",
        "a host name that does not resolve": "test_connection_refused_and_dns_get_one_sentence",
        "during a run: 500": "test_http_500_stops_the_run_and_keeps_what_was_measured",
        "failures within --max-errors": "test_max_errors_lets_the_run_go_on",
        "during a run: {}": "test_each_fault_is_named[{}-*]",
        "a server dying under load": "test_server_dying_under_load_is_counted_and_kept",
        "an API key and URL credentials through a server run": "test_secrets_are_sent_and_never_written",
        "an --api-key-env variable that is not set": "test_missing_key_variable_and_bad_url",
        "a server URL that is not http(s)": "test_missing_key_variable_and_bad_url",
        "a load without --server": "test_missing_key_variable_and_bad_url",
    },
    "tests/test_fault_env.py": {
        "a full profiles folder": "test_a_full_profiles_folder_keeps_the_snapshot_in_the_temporary_folder",
        "a full profiles folder and a full temporary folder": "test_a_full_disk_and_a_full_temporary_folder_say_the_snapshot_is_lost",
        "{} onto a full disk": "test_export_and_compare_onto_a_full_disk[{}-*]",
        "a read-only folder for {}": "test_read_only_folders_are_one_sentence[{}]",
        "two runs saving into one folder at once": "test_two_runs_save_into_one_profiles_folder_at_once",
        "two matrix runs on one folder": "test_a_second_matrix_on_the_same_folder_is_refused_at_once",
        "a lock holder killed with SIGKILL": "test_a_lock_holder_killed_with_sigkill_frees_the_folder",
        "umask 022": "test_a_new_snapshot_has_the_mode_the_umask_gives",
        "umask 077": "test_a_new_snapshot_has_the_mode_the_umask_gives",
    },
    "tests/test_fault_signals.py": {
        "{} at start-up": "test_a_signal_at_start_up_is_one_sentence_and_nothing_is_saved[{}]",
        "a signal during the {} stage": "test_a_signal_during_the_run_saves_an_incomplete_snapshot[{}]",
        "SIGKILL mid-run": "test_sigkill_during_a_run_leaves_no_half_written_snapshot",
        "{} during a save": "test_a_signal_during_a_deferred_save_waits_for_it[{}]",
        "{} cutting an atomic write": "test_a_catchable_signal_that_cuts_a_write_leaves_no_temporary_file[{}]",
        "SIGKILL at random moments of atomic writes": "test_sigkill_at_random_moments_never_leaves_a_partial_file",
        "SIGTERM during a matrix cell": "test_sigterm_during_a_matrix_cell_keeps_the_finished_cells",
        "{} to the dashboard": "test_the_dashboard_stopped_by_a_signal_saves_what_was_measured[{}]",
        "{} to the Matrix view": "test_the_matrix_dashboard_stopped_by_a_signal_stops_its_running_cell[{}]",
    },
    "tests/test_fault_display.py": {
        "control characters and bidirectional overrides in a string": "test_printable_and_one_line",
        "control characters in an event's fields": "test_clean_copies_only_what_changed",
        "markup and control characters through the console": "test_the_console_escapes_what_it_prints_and_keeps_its_own_styles",
        "hostile snapshot fields and file names through {}": "test_commands_escape_snapshot_fields_and_file_names[{}]",
        "a hostile file name in an error": "test_an_error_naming_a_hostile_file_is_escaped",
        "hostile names on the dashboard": "test_the_dashboard_shows_hostile_names_as_text",
        "control characters in nested and shared data": "test_clean_walks_nested_data_once",
    },
    "tests/test_fault_security.py": {
        "a planted API key and URL credentials through every output": "test_a_planted_secret_reaches_no_output",
        "a planted secret on the dashboard's screen": "test_the_dashboard_shows_no_secret",
        "credentials quoted back by a server: {}": ("test_credentials_a_server_quotes_back_are_redacted[{}-bearer]",
                                                    "test_credentials_a_server_quotes_back_are_redacted[{}-basic]"),
        "credentials quoted back by a server, through every output": "test_credentials_a_server_quotes_back_reach_no_output",
        "a message cut in the middle of a secret": "test_a_secret_where_a_message_is_cut_leaves_no_part_of_it",
        "an API key ending in a carriage return": "test_an_api_key_no_header_can_carry_is_refused_unshown[*\\r-*",
        "an API key ending in a line end": ("test_an_api_key_no_header_can_carry_is_refused_unshown[*\\r\\n-*",
                                            "test_an_api_key_no_header_can_carry_is_one_sentence_on_the_command_line"),
        "an API key holding a line end": "test_an_api_key_no_header_can_carry_is_refused_unshown[sk-\\nsk-*",
        "an API key holding an escape": "test_an_api_key_no_header_can_carry_is_refused_unshown[*\\x1b-*",
        "an API key holding a tab": "test_an_api_key_no_header_can_carry_is_refused_unshown[*\\t-*",
        "an API key holding DEL": "test_an_api_key_no_header_can_carry_is_refused_unshown[*\\x7f-*",
        "an API key ending in a space": "test_an_api_key_no_header_can_carry_is_refused_unshown[*51 -*",
        "an API key beginning with a space": "test_an_api_key_no_header_can_carry_is_refused_unshown[ sk-*",
        "an API key holding a non-ASCII letter": ("test_an_api_key_no_header_can_carry_is_refused_unshown[*\\xe9-*",
                                                  "test_an_api_key_no_header_can_carry_is_one_sentence_on_the_command_line"),
        "an API key in typographic quotes": "test_an_api_key_no_header_can_carry_is_refused_unshown[\\u201c*",
        "a code loader anywhere in the source": "test_the_engine_and_the_dashboard_hold_no_code_loader",
        "a reference file holding a pickle": "test_a_reference_file_with_a_pickle_is_refused_unopened",
        "snapshot fields that look like code": "test_snapshot_fields_that_look_like_code_stay_data",
        "a model folder with its own code, without --trust-remote-code": "test_a_model_s_own_code_runs_only_with_the_flag_and_the_snapshot_says_so",
        "a model folder with its own code, with --trust-remote-code": "test_a_model_s_own_code_runs_only_with_the_flag_and_the_snapshot_says_so",
    },
    "tests/test_bad_input.py": {
        "a missing input file": "test_missing_input_file",
        "an empty input file": "test_empty_input_file",
        "an undecodable input file": "test_undecodable_input_file",
        "a missing model folder": "test_missing_model_folder",
        "a folder that is not a model": "test_folder_that_is_not_a_model",
        "an unknown model offline": "test_unknown_hub_model_offline",
        "an unknown model with the Hub unreachable": "test_unknown_hub_model_with_the_hub_unreachable",
        "an unknown workload": "test_unknown_workload",
        "a bad sample rate": "test_bad_sample_rate",
        "a read-only profiles folder": "test_unwritable_profiles_dir_readonly",
        "a profiles folder that cannot be made": "test_unwritable_profiles_dir",
        "a corrupt snapshot": "test_corrupt_snapshot",
        "an unknown prompt name": "test_unknown_prompt_name",
        "cuda without a GPU": "test_device_cuda_without_gpu",
    },
}
# Tests in those files that check a normal behaviour rather than a fault.
NOT_FAULTS_KEPT_HERE: dict[str, tuple[str, ...]] = {
    "tests/test_http_faults.py": ("test_prompts_are_applied_client_side",),
}


def collected(files: list[str]) -> dict[str, list[str]]:
    """Each file's tests as pytest collects them: their names in the file (``name[params]``)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files], cwd=REPO,
                         capture_output=True, text=True, timeout=300).stdout
    names: dict[str, list[str]] = {f: [] for f in files}
    for line in out.splitlines():
        path, sep, name = line.partition("::")
        if sep and path in names:
            names[path].append(name)
    return names


def _module_literal(path: Path, name: str) -> Any:
    """The value of the module-level assignment ``name = <literal>`` in a Python file (None when there is none):
    read, never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            value = node.value
            assert value is not None, f"{path.name}: {name} has no value"
            if isinstance(value, ast.Dict):  # a literal dict keeps the last of two equal keys silently: refuse them
                keys = [ast.literal_eval(k) for k in value.keys if k is not None]
                assert len(keys) == len(set(keys)), f"{path.name}: {name} names a kind twice"
            return ast.literal_eval(value)
    return None


def kinds_declared(file: str) -> tuple[dict[str, Patterns], tuple[str, ...]]:
    """A file's FAULT_KINDS and NOT_FAULTS, from the file itself or, until it holds them, from this module."""
    own = _module_literal(REPO / file, "FAULT_KINDS")
    own_not = _module_literal(REPO / file, "NOT_FAULTS")
    if own is not None:
        assert file not in KINDS_KEPT_HERE and file not in NOT_FAULTS_KEPT_HERE, f"{file} lists its kinds itself and here too"
        return own, tuple(own_not or ())
    assert file in KINDS_KEPT_HERE, (f"{file} names no kinds of fault: give it a module-level FAULT_KINDS "
                                     "(see this module's docstring)")
    return KINDS_KEPT_HERE[file], NOT_FAULTS_KEPT_HERE.get(file, ())


def _regex(pattern: str) -> re.Pattern[str]:
    """``*``: any text; ``{}``: the text a kind is named by; the rest literal. Without ``[``, every parametrization."""
    parts = re.split(r"(\*|\{\})", pattern)
    body = "".join(".*?" if p == "*" else "(.+?)" if p == "{}" else re.escape(p) for p in parts)
    return re.compile(body if "[" in pattern else body + r"(?:\[.*\])?")


def kinds_of(file: str, names: list[str], declared: dict[str, Patterns], not_faults: tuple[str, ...]) -> set[str]:
    """The kinds of fault a file's collected tests try, as its ``declared`` kinds name them, checked against those
    tests (see the module's docstring)."""
    kinds: set[str] = set()
    named: set[str] = set()
    for label, given in declared.items():
        patterns = (given,) if isinstance(given, str) else tuple(given)
        for pattern in patterns:
            assert ("{}" in label) == ("{}" in pattern), f"{file}: {label!r} and its pattern {pattern!r} must both hold {{}} or neither"
            rx = _regex(pattern)
            hits = [(n, m) for n in names if (m := rx.fullmatch(n)) is not None]
            assert hits, f"{file}: the kind {label!r} names {pattern!r}, which is no test of the file"
            for n, m in hits:
                named.add(n)
                kinds.add(label.replace("{}", m.group(1)) if "{}" in label else label)
    for pattern in not_faults:
        rx = _regex(pattern)
        hits = [n for n in names if rx.fullmatch(n)]
        assert hits, f"{file}: NOT_FAULTS names {pattern!r}, which is no test of the file"
        named.update(hits)
    unnamed = [n for n in names if n not in named]
    assert not unnamed, f"{file}: these tests try no kind of fault its FAULT_KINDS names (name it, or list the test in NOT_FAULTS): {unnamed}"
    return kinds


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def table_rows(page: str) -> list[tuple[list[str], int, int]]:
    """Each fault class of the page: its test files, the kinds and the cases it states."""
    rows = [line for line in page.splitlines() if line.startswith("|") and "`tests/test_" in line]
    out = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        files = re.findall(r"`(tests/test_[a-z_]+\.py)`", cells[-3])
        out.append((files, _number(cells[-2]), sum(_number(n) for n in re.findall(r"[\d,]+", cells[-1]))))
    return out


def test_the_reliability_page_counts_the_suite_as_it_is() -> None:
    page = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = table_rows(page)
    assert len(rows) >= 8
    names = collected([f for files, _, _ in rows for f in files])
    kinds_total = cases_total = 0
    for files, kinds, cases in rows:
        tried: set[str] = set()
        for f in files:
            tried |= kinds_of(f, names[f], *kinds_declared(f))
        assert kinds == len(tried), (files, f"the page says {kinds} kinds, the tests try {len(tried)}", sorted(tried))
        assert cases == sum(len(names[f]) for f in files), (files, {f: len(names[f]) for f in files}, cases)
        kinds_total += len(tried)
        cases_total += cases
    total = re.search(r"([\d,]+) kinds of fault in ([\d,]+) test cases", page)
    assert total is not None
    assert (_number(total.group(1)), _number(total.group(2))) == (kinds_total, cases_total)


def test_every_fault_test_file_has_its_row() -> None:
    page = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    on_page = {f for files, _, _ in table_rows(page) for f in files}
    files = {f"tests/{p.name}" for p in (REPO / "tests").glob("test_fault_*.py")}
    assert not files - on_page, f"fault test files the page's table does not name: {sorted(files - on_page)}"


def test_kinds_are_computed_from_the_names_of_the_tests() -> None:
    """The counting itself, on made-up names: a parametrized kind per distinct text, shared labels once, every
    test accounted for, and a pattern that names no test refused."""
    names = ["test_a[show-empty]", "test_a[list-empty]", "test_a[show-utf-16]", "test_b", "test_c[x]", "test_d"]
    kinds: dict[str, Patterns] = {"file: {}": "test_a[*-{}]", "b or c": ("test_b", "test_c")}
    assert kinds_of("made_up.py", names, kinds, ("test_d",)) == {"file: empty", "file: utf-16", "b or c"}
    with pytest.raises(AssertionError, match=r"test_d"):
        kinds_of("made_up.py", names, kinds, ())
    with pytest.raises(AssertionError, match=r"'test_e', which is no test"):
        kinds_of("made_up.py", names, {**kinds, "gone": "test_e"}, ("test_d",))
    with pytest.raises(AssertionError, match=r"both hold"):
        kinds_of("made_up.py", names, {"file": "test_a[*-{}]"}, ("test_b", "test_c", "test_d"))
