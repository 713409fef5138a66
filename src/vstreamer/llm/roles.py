"""Prompts arranged for strict chat templates, which take user and assistant turns only, alternating from a user one.

vstreamer prompts open with a system message (the persona), often followed by the persona's greeting as the first
assistant turn, and may end with a second system message (the card's post-history note). ChatML-style templates take
that. Strict ones refuse it: Mistral's and Llama 2's raise "Conversation roles must alternate
user/assistant/user/assistant/..." unless the turns after an optional first system message start with a user one and
alternate; Gemma's raise "System role not supported" for any system message. :func:`strict_roles` rearranges a
prompt so that they take it, and :func:`is_role_refusal` recognises such a refusal in a server's error message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

from vstreamer.llm.base import ChatMessage

PromptRoles = Literal["auto", "system", "strict"]
"""How prompts are sent: ``system`` as built, ``strict`` always :func:`strict_roles`-arranged, ``auto`` arranged
only for a model whose chat template needs it."""

PART_SEPARATOR = "\n\n"
"""Between the texts of messages joined into one (:func:`alternating`)."""

OPENING = "..."
"""The user message a prompt that would open with the assistant gets in front (a strict template wants a user
turn first): the shortest that reads as nothing said, so that the model is not told anything new."""

REPRESENTATIVE_PROMPT = (
    ChatMessage("system", "You are Nova, a cheerful streamer."),
    ChatMessage("assistant", "Hello, welcome to the stream!"),
    ChatMessage("user", "Hi Nova!"),
    ChatMessage("assistant", "Hi! Glad you are here."),
    ChatMessage("user", "What are you playing today?"),
    ChatMessage("system", "Stay in character."),
)
"""A prompt shaped as vstreamer builds them, to try a chat template with: the persona, the greeting, a turn of each,
the new message, the post-history note."""

#: What the chat templates that want strict roles raise (as servers quote it): Mistral, Mixtral, Llama 2, Command R
#: ("...roles must alternate user/chatbot/..."), Gemma; mistral-common's validation (vLLM's ``tokenizer_mode
#: mistral``). Matched narrowly: a resend that cannot help would only cost a request, but an error of another kind
#: must reach the user as it is.
_ROLE_REFUSAL = re.compile(
    r"roles must alternate"
    r"|system role (?:is )?not supported"
    r"|only user,? (?:and )?assistant (?:and tool )?roles are supported"
    r"|unexpected role '?\w+'? after role",
    re.IGNORECASE,
)


def alternating(messages: list[ChatMessage]) -> list[ChatMessage]:
    """``messages`` with each run of messages of one role joined into one (their texts a blank line apart).

    A reply that failed, or was stopped before its first text, is in no prompt, but its user message is: the next
    message would follow it as a second user message in a row, which strict chat templates (Mistral, Gemma,
    Llama 2) refuse. Joined, the model reads both, as the viewer sent them. The joined message takes no more tokens
    than the shares of its parts that the budget counted: the blank line costs a token or two, less than the role
    markers of the message it saves (ChatML and the strict templates spend 3-8 a message; the estimate counts 8).
    """
    if all(a.role != b.role for a, b in pairwise(messages)):
        return messages  # the usual prompt: nothing to join, nothing made
    runs: list[list[ChatMessage]] = []
    for message in messages:
        if runs and runs[-1][0].role == message.role:
            runs[-1].append(message)
        else:
            runs.append([message])
    return [
        run[0] if len(run) == 1 else ChatMessage(run[0].role, PART_SEPARATOR.join(m.content for m in run))
        for run in runs
    ]


def strict_roles(messages: Sequence[ChatMessage]) -> Sequence[ChatMessage]:
    """``messages`` as strict chat templates take them: user and assistant messages only, alternating, the first a
    user one. A prompt that is so already is returned as it is (the same object, at the cost of one pass over the
    roles).

    Each system message becomes user text: the leading ones (the persona) open the first user message, joined with
    the user message right after them if there is one; a later one (the post-history note) joins the user message
    right before it, after its text, or else the one right after it (between two assistant messages, or after the
    last one, it is a user message of its own). Then runs of one role are joined, their texts
    :data:`PART_SEPARATOR` apart, by :func:`alternating`. No text is dropped,
    and the texts keep their order. A prompt that would still open with the assistant (no system message leads it)
    gets the :data:`OPENING` user message in front.

    The arranged prompt takes no more tokens than the shares of its messages that a context budget counted (each
    message's text plus the template's overhead for one message): a system message made a user one costs its
    share, and each join saves one message's role markers (3-8 tokens in the strict templates) for a separator of
    a token or two. The opening message is the exception, a few tokens that ``ContextBudget.reserve_tokens`` covers;
    a vstreamer prompt never needs it (its system message leads it).
    """
    if _strict_already(messages):
        return messages
    arranged = alternating([ChatMessage("user", m.content) if m.role == "system" else m for m in messages])
    if arranged and arranged[0].role == "assistant":
        arranged.insert(0, ChatMessage("user", OPENING))
    return arranged


def _strict_already(messages: Sequence[ChatMessage]) -> bool:
    """Whether a strict template takes ``messages`` as they are (an empty prompt too: nothing to arrange)."""
    if not messages:
        return True
    if messages[0].role != "user":
        return False
    return all(a.role != b.role and b.role != "system" for a, b in pairwise(messages))


def is_role_refusal(message: str) -> bool:
    """Whether a server's error message is a chat template refusing the prompt's roles (see :data:`_ROLE_REFUSAL`)."""
    return _ROLE_REFUSAL.search(message) is not None
