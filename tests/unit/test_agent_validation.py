"""The agent's validation of jobs, operations and policies: every field, good and bad."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.borg import AGENT_PATH
from tests.integration.agent_support import load_agent

agent = load_agent()

CREATE_JOB: dict[str, Any] = {
    "protocol": 1,
    "repository": "/srv/backup/repo",
    "archive_prefix": "laptop",
    "paths": ["/home", "/etc"],
}


def job(**fields: Any) -> dict[str, Any]:
    return {**CREATE_JOB, **fields}


def rejected_field(operation: str, raw: object) -> str:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job(operation, raw)
    return str(caught.value.field)


def test_minimal_create_job_gets_the_defaults() -> None:
    validated = agent.validate_job("create", CREATE_JOB)
    assert validated.repository == "/srv/backup/repo"
    assert validated.paths == ("/home", "/etc")
    assert validated.exclude_if_present == (".nobackup",)
    assert validated.lock_wait == 60
    assert validated.one_file_system is False
    assert validated.passphrase is None


def test_every_field_accepted_with_good_values() -> None:
    validated = agent.validate_job(
        "create",
        job(
            passphrase="pass word",
            exclude_patterns=["*.tmp", "- /home/*/.cache"],
            exclude_if_present=[".nobackup", "CACHEDIR.TAG"],
            one_file_system=True,
            compression="auto,zstd,3",
            keep={"within": "7d", "daily": 7, "weekly": 0},
            lock_wait=0,
            borg_rsh="ssh -i /root/.ssh/backup -o BatchMode=yes -p 2222",
            borg_remote_path="/usr/local/bin/borg",
        ),
    )
    assert validated.keep.within == "7d"
    assert validated.keep.counts == (("daily", 7),)  # zero counts are left out
    assert validated.compression == "auto,zstd,3"


def test_passphrase_is_not_in_the_jobs_repr() -> None:
    assert "secret-value" not in repr(agent.validate_job("create", job(passphrase="secret-value")))


@pytest.mark.parametrize(
    "repository",
    [
        "/srv/backup/repo",
        "ssh://borg@backup.lan/srv/repo",
        "ssh://borg@backup.lan:2222/./repo",
        "ssh://borg@[fd00::1]:22/srv/repo",
        "borg@backup.lan:repo",
        "borg@backup.lan:/srv/repo",
        "/srv/a:b",
    ],
)
def test_good_repositories(repository: str) -> None:
    assert agent.validate_job("list", job(repository=repository)).repository == repository


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        ("relative/repo", "must be an absolute path"),
        ("-x", "must not start with '-'"),
        ("--remote-path=evil", "must not start with '-'"),
        ("/srv/repo::archive", "must not contain '::'"),
        ("/srv/../etc", "must not contain '..'"),
        ("ssh://borg@host/srv/../x", "must not contain '..'"),
        ("ssh://host", "must be an absolute path"),
        ("ssh://-oProxyCommand=x@host/srv", "must be an absolute path"),
        ("borg@-oProxy:x", "must be an absolute path"),
        ("/srv/repo\n", "must not contain control characters"),
        ("", "must not be empty"),
        (5, "must be a string"),
        ("/" + "a" * 5000, "at most 4096"),
    ],
)
def test_bad_repositories(repository: object, message: str) -> None:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job("list", job(repository=repository))
    assert caught.value.field == "repository"
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        ([], "paths"),
        ("/home", "paths"),
        (["/home", "relative"], "paths[1]"),
        (["/home/../etc"], "paths[0]"),
        (["/home/new\nline"], "paths[0]"),
        (["/home/nul\x00"], "paths[0]"),
        (["/ok", 3], "paths[1]"),
        (["/ok", "-"], "paths[1]"),
        (["/lone\ud800surrogate"], "paths[0]"),
    ],
)
def test_bad_paths(paths: object, field: str) -> None:
    assert rejected_field("create", job(paths=paths)) == field


def test_paths_may_hold_undecodable_bytes_as_surrogate_escapes() -> None:
    validated = agent.validate_job("create", job(paths=["/home/caf\udce9"]))
    assert validated.paths == ("/home/caf\udce9",)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("archive_prefix", ""),
        ("archive_prefix", "-lead"),
        ("archive_prefix", ".hidden"),
        ("archive_prefix", "has space"),
        ("archive_prefix", "glob*"),
        ("archive_prefix", "a" * 65),
        ("archive_prefix", 7),
        ("exclude_patterns", "*.tmp"),
        ("exclude_patterns", ["ok", "bad\x01"]),
        ("exclude_patterns", ["x"] * 1001),
        ("exclude_patterns", ["a" * 4097]),
        ("exclude_if_present", ["a/b"]),
        ("exclude_if_present", [".."]),
        ("exclude_if_present", [""]),
        ("one_file_system", 1),
        ("one_file_system", "true"),
        ("compression", "lz4; rm -rf /"),
        ("compression", "zstd,23"),
        ("compression", "zlib,10"),
        ("compression", "obfuscate,1,lz4"),
        ("lock_wait", -1),
        ("lock_wait", 86401),
        ("lock_wait", True),
        ("lock_wait", 1.5),
        ("borg_rsh", "sh -c id"),
        ("borg_rsh", "ssh -o ProxyCommand=id"),
        ("borg_rsh", "ssh -oLocalCommand=id"),
        ("borg_rsh", "ssh -i -oProxyCommand=id"),
        ("borg_rsh", "ssh -i"),
        ("borg_rsh", "ssh 'unterminated"),
        ("borg_rsh", "ssh\n-v"),
        ("borg_remote_path", "borg; id"),
        ("borg_remote_path", "borg serve"),
        ("borg_remote_path", "-borg"),
        ("passphrase", 12345),
        ("passphrase", "nul\x00inside"),
        ("protocol", 3),
        ("protocol", 0),
        ("protocol", True),
        ("protocol", "1"),
    ],
)
def test_bad_values_name_their_field(field: str, value: object) -> None:
    named = rejected_field("create", job(**{field: value}))
    assert named == field or named.startswith(field + "[")  # list entries: "name[index]"


@pytest.mark.parametrize(
    ("keep", "field"),
    [
        ({"daily": -1}, "keep.daily"),
        ({"daily": True}, "keep.daily"),
        ({"weekly": "4"}, "keep.weekly"),
        ({"within": "0d"}, "keep.within"),
        ({"within": "1S"}, "keep.within"),
        ({"within": "7 d"}, "keep.within"),
        ({"within": "1234567d"}, "keep.within"),
        ({"secondly": 3}, "keep.secondly"),
        ([7], "keep"),
    ],
)
def test_bad_keep_rules(keep: object, field: str) -> None:
    assert rejected_field("prune", job(keep=keep)) == field


@pytest.mark.parametrize("within", ["1H", "7d", "4w", "6m", "1y", "999999d"])
def test_keep_within_accepts_borgs_units(within: str) -> None:
    assert agent.validate_job("prune", job(keep={"within": within})).keep.within == within


def test_passphrase_is_never_repeated_in_a_rejection() -> None:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job("create", job(passphrase="secret\x00value"))
    assert "secret" not in str(caught.value)


def test_unknown_fields_are_rejected() -> None:
    assert rejected_field("create", job(target="/tmp")) == "target"


def test_protocol_is_required() -> None:
    assert rejected_field("hello", {}) == "protocol"


def test_job_must_be_an_object() -> None:
    assert rejected_field("create", [CREATE_JOB]) == "job"


@pytest.mark.parametrize(
    ("operation", "raw", "field"),
    [
        ("list", {"protocol": 1}, "repository"),
        ("create", {k: v for k, v in CREATE_JOB.items() if k != "paths"}, "paths"),
        (
            "create",
            {k: v for k, v in CREATE_JOB.items() if k != "archive_prefix"},
            "archive_prefix",
        ),
        ("prune", CREATE_JOB, "keep"),
        ("prune", job(keep={"daily": 0}), "keep"),
        ("prune", {"protocol": 1, "repository": "/r", "keep": {"daily": 1}}, "archive_prefix"),
    ],
)
def test_required_fields_per_operation(operation: str, raw: dict[str, Any], field: str) -> None:
    assert rejected_field(operation, raw) == field


def test_hello_needs_only_the_protocol() -> None:
    assert agent.validate_job("hello", {"protocol": 1}).repository == ""


# -- the operation word (SSH_ORIGINAL_COMMAND or argv) --------------------------------------


@pytest.mark.parametrize("word", ["hello", "create", "prune", "stats", "list", "check"])
def test_allowed_operations(word: str) -> None:
    assert agent.validate_operation(word, None) == word
    assert agent.validate_operation(None, word) == word
    assert agent.validate_operation(word, word) == word


@pytest.mark.parametrize(
    "ssh_command",
    [
        "",
        " create",
        "create ",
        "create; rm -rf /",
        "create --foo",
        "$(id)",
        "create\n",
        "'create'",
        "backup",
    ],
)
def test_anything_but_one_allowed_word_is_rejected(ssh_command: str) -> None:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_operation(ssh_command, None)
    assert caught.value.field == "operation"


def test_offsite_is_reserved() -> None:
    with pytest.raises(agent.Rejected, match="not supported by this agent version"):
        agent.validate_operation("offsite", None)


def test_ssh_command_and_argv_must_agree() -> None:
    with pytest.raises(agent.Rejected, match="differ"):
        agent.validate_operation("create", "list")


def test_no_operation_at_all_is_rejected() -> None:
    with pytest.raises(agent.Rejected, match="no operation"):
        agent.validate_operation(None, None)


# -- the job line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"", b"   ", b"not json", b"{", b"\xff\xfe", b"[" * 100000, b'{"a": 1e999999}x'],
)
def test_unreadable_job_lines_are_rejected(line: bytes) -> None:
    with pytest.raises(agent.Rejected) as caught:
        agent.parse_job_line(line)
    assert caught.value.field == "job"


def test_job_line_has_a_size_limit() -> None:
    line = json.dumps({"protocol": 1, "pad": "x" * agent.JOB_LINE_LIMIT}).encode()
    with pytest.raises(agent.Rejected, match="longer than"):
        agent.parse_job_line(line)


# -- properties -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
job_like = st.fixed_dictionaries(
    {},
    optional={name: json_values for name in ["protocol", *agent.FIELD_VALIDATORS, "extra"]},
)


def validation_outcome(operation: str, raw: object) -> Any:
    """The validated Job, or the Rejected exception (any other exception fails the test)."""
    try:
        return agent.validate_job(operation, raw)
    except agent.Rejected as rejection:
        return rejection


@settings(max_examples=150, deadline=None)
@given(operation=st.sampled_from(agent.OPERATIONS), raw=json_values | job_like)
def test_any_json_value_is_either_a_job_or_a_rejection(operation: str, raw: object) -> None:
    outcome = validation_outcome(operation, raw)
    assert isinstance(outcome, agent.Job) or (outcome.field and outcome.message)


@settings(max_examples=30, deadline=None)
@given(
    first_line=st.binary(max_size=200).filter(lambda b: b"\n" not in b)
    | st.text(max_size=200).filter(lambda t: "\n" not in t).map(str.encode)
)
def test_the_agent_answers_garbage_with_a_rejection(first_line: bytes) -> None:
    completed = subprocess.run(
        [sys.executable, str(AGENT_PATH), "serve"],
        input=first_line + b"\n",
        capture_output=True,
        env={"SSH_ORIGINAL_COMMAND": "create", "PATH": "/nonexistent"},
        timeout=30,
        check=False,
    )
    events = [json.loads(line) for line in completed.stdout.splitlines()]
    assert completed.returncode == 3, completed.stderr
    assert [e["type"] for e in events] == ["hello", "result"]
    assert events[-1]["error"]["msgid"] == "JobRejected"


# -- borg_rsh: ssh itself, with host keys always verified ----------------------------------


@pytest.mark.parametrize(
    "borg_rsh",
    [
        "ssh",
        "/usr/bin/ssh",
        "/usr/bin/ssh -i /root/.ssh/backup -p 2222 -4 -C -T -q -x -a",
        "ssh -o StrictHostKeyChecking=yes",
        "ssh -o stricthostkeychecking=YES -o BatchMode=yes",
        "ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/backup/known_hosts",
        "ssh -o UserKnownHostsFile=/etc/backup/known_hosts -o StrictHostKeyChecking=yes",
        "ssh -o ServerAliveInterval=10 -o ServerAliveCountMax=3 -o ConnectTimeout=5",
        "ssh -o IdentityFile=/root/.ssh/backup -o IdentitiesOnly=yes -o Port=2222",
        "ssh -o ConnectionAttempts=2 -o Compression=no -o LogLevel=ERROR",
    ],
)
def test_borg_rsh_accepts_ssh_with_safe_options(borg_rsh: str) -> None:
    assert agent.validate_job("list", job(borg_rsh=borg_rsh)).borg_rsh == borg_rsh


@pytest.mark.parametrize(
    ("borg_rsh", "message"),
    [
        # a job never chooses the binary: only ssh from PATH or /usr/bin/ssh
        ("/tmp/evil/ssh", "must start with ssh or /usr/bin/ssh"),
        ("./ssh", "must start with ssh or /usr/bin/ssh"),
        ("/usr/local/bin/ssh", "must start with ssh or /usr/bin/ssh"),
        ("ssh2 -i /k", "must start with ssh or /usr/bin/ssh"),
        ("-o ProxyCommand=id", "must start with ssh or /usr/bin/ssh"),
        # host keys are always verified
        ("ssh -o StrictHostKeyChecking=no", "StrictHostKeyChecking"),
        ("ssh -o StrictHostKeyChecking=off", "StrictHostKeyChecking"),
        ("ssh -o StrictHostKeyChecking=accept-new", "StrictHostKeyChecking"),
        ("ssh -o StrictHostKeyChecking=ask", "StrictHostKeyChecking"),
        ("ssh -o StrictHostKeyChecking=false", "StrictHostKeyChecking"),
        (
            "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "StrictHostKeyChecking",
        ),
        ("ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/dev/null", "/dev/null"),
        ("ssh -o UserKnownHostsFile=/etc/backup/known_hosts", "StrictHostKeyChecking=yes"),
        ("ssh -o GlobalKnownHostsFile=/dev/null", "not allowed"),
        ("ssh -o CheckHostIP=no", "not allowed"),
        ("ssh -o HostKeyAlias=other", "not allowed"),
        ("ssh -o VerifyHostKeyDNS=yes", "not allowed"),
        ("ssh -o UpdateHostKeys=yes", "not allowed"),
        ("ssh -o KnownHostsCommand=id", "not allowed"),
        # ssh reads "-o 'Key Value'" too: only KEY=VALUE, one word, is understood here
        ("ssh -o 'StrictHostKeyChecking no'", "KEY=VALUE"),
        ("ssh -o 'StrictHostKeyChecking = no'", "KEY=VALUE"),
        ("ssh -o StrictHostKeyChecking=yes=no", "KEY=VALUE"),
        ("ssh -o 'StrictHostKeyChecking=yes no'", "KEY=VALUE"),
        ("ssh -o StrictHostKeyChecking=", "KEY=VALUE"),
        # agent forwarding to a host the job names
        ("ssh -A", "may only use"),
        ("ssh -o ForwardAgent=yes", "not allowed"),
        ("ssh -p 0", "-p"),
        ("ssh -p 22x", "-p"),
        ("ssh -F /tmp/config", "may only use"),
    ],
)
def test_borg_rsh_rejections(borg_rsh: str, message: str) -> None:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job("list", job(borg_rsh=borg_rsh))
    assert caught.value.field == "borg_rsh"
    assert message in caught.value.message


# -- repository locations borg 1.2 accepts ---------------------------------------------------


@pytest.mark.parametrize(
    "repository",
    [
        "ssh://backup.lan/srv/repo",
        "ssh://backup.lan:2222/./repo",
        "ssh://backup.lan/~/repo",
        "ssh://[fd00::1]/srv/repo",
        "ssh://[fd00::1]:2222/srv/repo",
        "ssh://my_nas/srv/repo",
        "backup.lan:repo",
        "backup.lan:/srv/repo",
        "backup.lan:~/repo",
        "[fd00::1]:/srv/repo",
        "borg@[fd00::1]:/srv/repo",
        "ssh://borg@backup.lan:65535/srv/repo",
    ],
)
def test_locations_without_a_user_and_other_borg_forms(repository: str) -> None:
    assert agent.validate_job("list", job(repository=repository)).repository == repository


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        ("ssh://backup.lan:0/srv/repo", "port must be between 1 and 65535"),
        ("ssh://backup.lan:65536/srv/repo", "port must be between 1 and 65535"),
        ("file:///srv/repo", "must be an absolute path"),
        ("backup.lan::repo", "must not contain '::'"),
        ("/srv/a@[::1]", "must not contain '::'"),
        ("ssh://borg@[fd00::1]/srv/repo::x", "must not contain '::'"),
        ("[fd00::1]:/srv/repo::x", "must not contain '::'"),
        ("backup.lan://srv/repo", "must be an absolute path"),
        ("ssh://backup.lan", "must be an absolute path"),
        ("ssh://-oProxyCommand=id/srv", "must be an absolute path"),
        ("-oProxyCommand=id:x", "must not start with '-'"),
        ("backup.lan:", "must be an absolute path"),
        ("backup.lan:../x", "must not contain '..'"),
        ("ssh://backup.lan/./../x", "must not contain '..'"),
        # borg expands placeholders in a location: {now:..} would become ".."
        ("/srv/backup/{now:..}/{now:..}/etc", "must not contain '{' or '}'"),
        ("/srv/backup/{hostname}", "must not contain '{' or '}'"),
        ("ssh://nas/srv/{user}", "must not contain '{' or '}'"),
        ("/srv/backup/}", "must not contain '{' or '}'"),
    ],
)
def test_more_bad_locations(repository: str, message: str) -> None:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job("list", job(repository=repository))
    assert caught.value.field == "repository"
    assert message in caught.value.message


# -- borg_rsh may not reach another port than the repository location names ---------------------


@pytest.mark.parametrize(
    ("repository", "borg_rsh"),
    [
        ("ssh://borg@nas:2222/srv/borg", "ssh -p 2222"),
        ("ssh://borg@nas:2222/srv/borg", "ssh -o Port=2222"),
        ("ssh://borg@nas/srv/borg", "ssh -i /root/.ssh/backup -o BatchMode=yes"),
        ("borg@nas:/srv/borg", "ssh -C"),
        ("/srv/borg", "ssh -p 2222"),  # a local repository runs no ssh
    ],
)
def test_borg_rsh_ports_that_agree_with_the_location(repository: str, borg_rsh: str) -> None:
    agent.validate_job("list", job(repository=repository, borg_rsh=borg_rsh))


@pytest.mark.parametrize(
    ("repository", "borg_rsh", "message"),
    [
        ("ssh://borg@nas:2222/srv/borg", "ssh -p 22", "other than the repository location's"),
        ("ssh://borg@nas:2222/srv/borg", "ssh -o Port=22", "other than the repository"),
        ("ssh://borg@nas:2222/srv/borg", "ssh -p 2222 -o port=23", "other than the repository"),
        ("ssh://borg@nas/srv/borg", "ssh -p 2222", "write it in the repository location"),
        ("ssh://borg@nas/srv/borg", "ssh -p 22", "write it in the repository location"),
        ("borg@nas:/srv/borg", "ssh -o Port=2222", "write it in the repository location"),
        ("borg@nas:/srv/borg", "ssh -o Port=ssh", "Port must be a port number"),
    ],
)
def test_borg_rsh_may_not_override_the_locations_port(
    repository: str, borg_rsh: str, message: str
) -> None:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job("list", job(repository=repository, borg_rsh=borg_rsh))
    assert caught.value.field == "borg_rsh"
    assert message in caught.value.message


# -- exclude patterns that could keep borg busy for hours are refused ---------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "*.tmp",
        "/home/*/.cache",
        "sh:**/.cache",
        "sh:**/*.tmp",
        "sh:/home/*/.local/share/Trash",
        "fm:*/node_modules/*",
        "pp:/var/cache",
        "pf:/etc/shadow",
        "pp:/weird/***/**/*",  # no wildcards in pp: and pf:
        "- /home/*/.cache",
        "C:/x",  # one letter: no style
    ],
)
def test_exclude_patterns_that_are_accepted(pattern: str) -> None:
    validated = agent.validate_job("create", job(exclude_patterns=[pattern]))
    assert validated.exclude_patterns == (pattern,)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("re:(a+)+$", "re: patterns are not accepted"),
        ("re:^/home/[^/]+/\\.cache$", "re: patterns are not accepted"),
        ("xx:/home", "unknown pattern style"),
        ("RE:(a+)+$", "unknown pattern style"),  # borg knows only lower-case styles
        ("sh:*a*a*a*ab", "at most 3 '*'"),
        ("sh:**/**/x", "at most 3 '*'"),
        ("*a*a*a*ab", "at most 3 '*'"),
        ("fm:*/*/*/*", "at most 3 '*'"),
    ],
)
def test_exclude_patterns_that_could_backtrack_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job("create", job(exclude_patterns=["*.tmp", pattern]))
    assert caught.value.field == "exclude_patterns[1]"
    assert message in caught.value.message
