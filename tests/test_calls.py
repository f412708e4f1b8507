"""calls.InFlight, the table of calls in flight the client and every worker keep: unit tests
(no processes). That its users keep their timing and ordering is tested end to end elsewhere
(test_errors: a dead or silent worker; test_leases and test_hostile: a relay that times out)."""

from dataclasses import dataclass

from fedq.calls import InFlight, answers_in
from fedq.errors import ProtocolError
from fedq.messages import Acked, Failure, Ok


@dataclass
class _Call:
    address: str
    hands_over: bool = False
    deadline: float = 0.0


def _table(max_unclaimed=None):
    finished, given_back = [], []
    table = InFlight(lambda call, answer: finished.append((call, answer)), given_back.append, max_unclaimed=max_unclaimed)
    return table, finished, given_back


def _failure(call):
    return Failure("WorkerUnreachableError", "fedq.errors", f"{call.address} did not answer", "", "me")


def test_an_answer_finishes_its_call_once():
    table, finished, _ = _table()
    call = _Call("a")
    table.add(1, call)
    assert table.answer(1, Ok(5)) and finished == [(call, Ok(5))] and len(table) == 0
    assert not table.answer(1, Ok(5)) and not table.answer(2, Ok()) and len(finished) == 1  # late, unknown


def test_a_late_answer_to_a_call_given_up_on_gives_back_what_it_hands_over():
    table, finished, given_back = _table()
    takes, plain = _Call("a", hands_over=True), _Call("a")
    table.add(1, takes)
    table.add(2, plain)
    table.add(3, _Call("b", hands_over=True))
    assert table.fail_peers({"a"}, _failure)
    assert [(call, answer.message) for call, answer in finished] == [(takes, "a did not answer"), (plain, "a did not answer")]
    assert table.answer(1, Ok("spec")) and given_back == ["spec"]  # once
    assert not table.answer(1, Ok("spec")) and given_back == ["spec"]
    assert not table.answer(2, Ok("spec")) and given_back == ["spec"]  # hands nothing over
    assert len(table) == 1 and not table.fail_peers({"a"}, _failure)


def test_a_late_failure_gives_nothing_back():
    table, _, given_back = _table()
    table.add(1, _Call("a", hands_over=True))
    table.fail_peers({"a"}, _failure)
    assert not table.answer(1, _failure(_Call("a"))) and given_back == []


def test_expire_fails_what_is_past_its_deadline_and_remembers_at_most_max_unclaimed():
    table, finished, given_back = _table(max_unclaimed=2)
    for seq in (1, 2, 3):
        table.add(seq, _Call("a", hands_over=True, deadline=float(seq)))
    table.add(4, _Call("a", hands_over=True, deadline=10.0))
    table.expire(3.0, _failure)
    assert len(finished) == 3 and len(table) == 1
    assert not table.answer(1, Ok("first"))  # the oldest was forgotten
    assert table.answer(2, Ok("second")) and table.answer(3, Ok("third")) and given_back == ["second", "third"]
    assert table.answer(4, Ok()) and len(finished) == 4


def test_answers_in_fails_a_refused_reply_and_drops_one_that_names_no_call():
    dropped = []
    replies = [(1, Ok(1)), (2, ProtocolError("refused")), (None, ProtocolError("not for us")), (0, Acked([3, 4])), (6, Acked([5], then=Ok(6)))]
    answers = list(answers_in(replies, "bob", dropped.append))
    assert [seq for seq, _ in answers] == [1, 2, 3, 4, 5, 6]
    failure = answers[1][1]
    assert isinstance(failure, Failure) and failure.type_name == "ProtocolError" and failure.worker == "bob"
    assert [str(error) for error in dropped] == ["refused", "not for us"]
    assert answers[-1] == (6, Ok(6))
