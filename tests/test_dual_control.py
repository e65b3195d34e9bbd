"""Dual control on fakes: the request fold, the service's refusals, and the CLI's gate table."""

from __future__ import annotations

import argparse
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from rotator.domain.approval import RequestStatus, approval_refused, requests_from
from rotator.domain.history import EventKind
from rotator.entrypoints.cli_parser import build_parser, leaf_commands
from rotator.entrypoints.gates import GATED_COMMANDS, GATES, gates_for, requested_argv
from rotator.errors import DualControlRefused
from rotator.services.dual_control import DualControl
from tests.fakes import FakeApprovals, FakeIdentity

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:sts::123456789012:assumed-role/approver/bob"
DESTROY = ["destroy", "k-1", "--yes"]


def service(approvals: FakeApprovals, who: str) -> DualControl:
    return DualControl(approvals, FakeIdentity(who), timedelta(hours=24), "test (cli)")


def test_a_request_is_open_until_exactly_its_expiry() -> None:
    approvals = FakeApprovals()
    request = service(approvals, ALICE).request(DESTROY, "old key", NOW)
    assert request.expires_at == NOW + timedelta(hours=24)
    folded = requests_from(approvals.events())[request.request_id]
    assert folded.requester == ALICE and folded.argv == tuple(DESTROY)
    assert (
        folded.status(NOW + timedelta(hours=24) - timedelta(microseconds=1)) is RequestStatus.OPEN
    )
    assert folded.status(NOW + timedelta(hours=24)) is RequestStatus.EXPIRED
    with pytest.raises(DualControlRefused, match="expired"):
        service(approvals, BOB).approve(request.request_id, NOW + timedelta(hours=24))
    assert approvals.claims == {}  # nothing was decided


def test_self_approval_is_refused_and_recorded() -> None:
    approvals = FakeApprovals()
    request = service(approvals, ALICE).request(DESTROY, "old key", NOW)
    with pytest.raises(DualControlRefused, match="second principal"):
        service(approvals, ALICE).approve(request.request_id, NOW)
    folded = requests_from(approvals.events())[request.request_id]
    assert folded.status(NOW) is RequestStatus.OPEN
    assert [(r.principal, "second principal" in r.why) for r in folded.refusals] == [(ALICE, True)]
    assert approval_refused(folded, BOB, NOW) is None


def test_an_approval_then_its_outcome_and_never_a_second_approval() -> None:
    approvals = FakeApprovals()
    request = service(approvals, ALICE).request(DESTROY, "old key", NOW)
    approved = service(approvals, BOB).approve(request.request_id, NOW + timedelta(hours=1))
    assert (approved.approver, approved.approved_at) == (BOB, NOW + timedelta(hours=1))
    folded = requests_from(approvals.events())[request.request_id]
    assert folded.status(NOW) is RequestStatus.APPROVED
    service(approvals, BOB).finish(approved, 0, NOW + timedelta(hours=2))
    folded = requests_from(approvals.events())[request.request_id]
    assert folded.status(NOW + timedelta(days=9)) is RequestStatus.EXECUTED
    assert (folded.exit_code, folded.finished_at) == (0, NOW + timedelta(hours=2))
    carol = "arn:aws:iam::123456789012:user/carol"
    with pytest.raises(DualControlRefused, match="executed"):
        service(approvals, carol).approve(request.request_id, NOW + timedelta(hours=3))


def test_two_approvers_racing_decide_once() -> None:
    """Both read the request open; the claim lets one through, the other is refused."""
    approvals = FakeApprovals()
    request = service(approvals, ALICE).request(DESTROY, "old key", NOW)
    approvals.claims[request.request_id] = approvals.recorded[0]  # the other approver won
    with pytest.raises(DualControlRefused, match="already decided"):
        service(approvals, BOB).approve(request.request_id, NOW)
    kinds = [e.kind for e in approvals.events()]
    assert EventKind.APPROVAL_GRANTED not in kinds and EventKind.APPROVAL_REFUSED in kinds


def test_only_the_requester_withdraws_and_a_withdrawn_request_is_not_approved() -> None:
    approvals = FakeApprovals()
    request = service(approvals, ALICE).request(DESTROY, "old key", NOW)
    with pytest.raises(DualControlRefused, match="only its requester"):
        service(approvals, BOB).cancel(request.request_id, NOW)
    service(approvals, ALICE).cancel(request.request_id, NOW + timedelta(minutes=5))
    folded = requests_from(approvals.events())[request.request_id]
    assert folded.status(NOW + timedelta(minutes=6)) is RequestStatus.CANCELLED
    assert service(approvals, BOB).open_requests(NOW + timedelta(minutes=6)) == []
    with pytest.raises(DualControlRefused, match="cancelled"):
        service(approvals, BOB).approve(request.request_id, NOW + timedelta(minutes=6))


# -- the gate table --------------------------------------------------------------------------

GATED_ARGV = {
    "destroy": ["destroy", "k-1", "--yes"],
    "--override-retention": ["destroy", "k-1", "--yes", "--override-retention", "--reason", "r"],
    "--ignore-stored-ciphertexts": [
        *("destroy", "k-1", "--yes", "--ignore-stored-ciphertexts", "--reason", "r")
    ],
    "rotate --emergency": ["rotate", "--emergency", "--reason", "r"],
    "retire --emergency": ["retire", "k-1", "--emergency", "--reason", "r"],
    "--abandon-key": ["init", "--instance-id", "i-1", "--flow-id", "f-1", "--abandon-key", "k"],
    "rollback": ["rollback", "--instance-id", "i-1"],
    "import": ["import", "--from-blog-parameters"],
}


GATED_ARGV_BY_COMMAND = {argv[0]: argv for argv in GATED_ARGV.values()}


def test_every_gate_has_an_example_and_plain_runs_pass_no_gate() -> None:
    parser = build_parser()
    covered = {g for argv in GATED_ARGV.values() for g in gates_for(parser.parse_args(argv))}
    assert covered == set(GATES)
    for argv in (["rotate"], ["retire", "k-1"], ["init", "--instance-id", "i-1"], ["status"]):
        assert gates_for(parser.parse_args(argv)) == []


def _flag_values(action: argparse.Action) -> list[list[str]]:
    """Ways to give the option `action` on a command line (no value, or a plausible one)."""
    flag = action.option_strings[-1]
    if action.nargs == 0:
        return [[flag]]
    return [[flag, "x"], [flag, "i-1"], [flag, "true"], [flag, "2030-01-01T00:00:00"]]


@pytest.mark.parametrize("name", sorted(GATED_ARGV))
def test_no_flag_of_a_gated_command_turns_its_gate_off(name: str) -> None:
    """Parse the gated command line with each flag its command has (and pairs of them): it
    stays gated unless it became a what-if (--dry-run, --now), which changes nothing."""
    parser = build_parser()
    argv = GATED_ARGV[name]
    leaf = leaf_commands(parser)[parser.parse_args(argv).handler]
    options = [a for a in leaf._actions if a.option_strings and a.dest not in ("help", "version")]
    extras = [values for a in options for values in _flag_values(a)]
    for one, two in itertools.combinations_with_replacement([[], *extras], 2):
        try:
            args = parser.parse_args([*argv, *one, *two])
        except SystemExit:
            continue  # a value this option refuses: the command does not run at all
        if getattr(args, "dry_run", False) or getattr(args, "now", None) is not None:
            continue
        assert gates_for(args), [*argv, *one, *two]
        assert not any(name in vars(args) for name in ("approval", "approved", "bypass"))


def test_a_request_names_every_gated_command_and_strips_local_options() -> None:
    parser = build_parser()
    for name in GATED_COMMANDS:
        assert parser.parse_args(["request", *GATED_ARGV_BY_COMMAND[name], "--reason", "r"])
    raw = [
        "--prefix",
        "/p",
        "request",
        "destroy",
        "k-1",
        "--yes",
        "--reason=why",
        "--log-level=INFO",
    ]
    assert requested_argv(raw) == ["destroy", "k-1", "--yes"]
    kept = [
        "request",
        "import",
        "--from-blog-parameters",
        "--kms-key-id",
        "alias/k",
        "--reason",
        "r",
    ]
    assert requested_argv(kept) == ["import", "--from-blog-parameters", "--kms-key-id", "alias/k"]


def test_the_report_lists_the_period_s_requests_with_their_outcome() -> None:
    import json

    import jsonschema

    from rotator.domain.checks import ReportOptions
    from rotator.domain.state import KeyringState
    from rotator.ports import ProtectionSweep
    from rotator.services.report import build_report
    from rotator.services.report_render import ReportFormat, render
    from tests.test_report import report_schema

    approvals = FakeApprovals()
    old = service(approvals, ALICE).request(["rollback", "--instance-id", "i-1"], "ancient", NOW)
    later = NOW + timedelta(days=400)
    done = service(approvals, ALICE).request(DESTROY, "old <key>", later)
    approved = service(approvals, BOB).approve(done.request_id, later + timedelta(hours=1))
    service(approvals, BOB).finish(approved, 0, later + timedelta(hours=1))
    open_one = service(approvals, BOB).request(["import", "--from-blog-parameters"], "adopt", later)
    facts = KeyringState(
        prefix="/p",
        records=(),
        current={},
        instances=(),
        protection=ProtectionSweep.unread(),
        events=tuple(approvals.events()),
    )
    report = build_report(facts, ReportOptions(), later + timedelta(hours=2))
    document = json.loads(render(report, ReportFormat.JSON))
    jsonschema.validate(document, report_schema(), format_checker=jsonschema.FormatChecker())
    listed = {r["request_id"]: r for r in document["dual_control_requests"]}
    assert set(listed) == {done.request_id, open_one.request_id}  # not the one of last year
    assert old.request_id not in listed
    executed = listed[done.request_id]
    assert (executed["status"], executed["exit_code"]) == ("executed", 0)
    assert (executed["requester"], executed["approver"]) == (ALICE, BOB)
    assert executed["reason"] == "old <key>"
    html = render(report, ReportFormat.HTML)
    assert "Dual control requests" in html and "executed (exit code 0)" in html
    assert "old &lt;key&gt;" in html and BOB in html
    # The requester and the approver ran key operations: the custodian section names both,
    # unacknowledged (custodian-unacknowledged).
    custodians = {c["principal"] for c in document["custodians"]["principals"]}
    assert custodians == {ALICE, BOB}
    unacknowledged = [f for f in document["findings"] if f["code"] == "custodian-unacknowledged"]
    assert len(unacknowledged) == 2
    assert all(any(p in str(f) for f in unacknowledged) for p in (ALICE, BOB))
