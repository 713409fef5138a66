"""``vstreamer chat``: an interactive terminal chat that streams the persona's replies.

Ctrl-C during a reply stops it (and the generation behind it) and keeps the partial reply; Ctrl-C at the prompt
only clears the line; Ctrl-D or ``/exit`` quits. Every conversation is stored from its first message, like the web
UI's, as the local user's (the web UI without login lists it in its history).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from vstreamer.config import Settings
from vstreamer.engine import Conversation, Turn
from vstreamer.errors import BackendError, ContextBudgetError, PersonaError, StoreError
from vstreamer.persona import Persona
from vstreamer.runtime import Runtime, open_runtime
from vstreamer.ui.options import LOCAL_USER

PLATFORM = "cli"

HELP = "命令 / commands: /reset 清空对话 · /persona 名字 切换角色 · /personas 列出角色 · /exit 退出"


class ChatSession:
    """The state of one terminal chat."""

    def __init__(self, runtime: Runtime, persona: Persona, out: TextIO) -> None:
        self.runtime = runtime
        self.out = out
        self.persona = persona
        self.stored: list[str] = []
        """Ids of the sessions this chat stored, in order."""
        self.failed = 0
        """Messages that got no reply (an error): the exit status tells a script."""
        self.conversation = self._new_conversation()

    def _new_conversation(self) -> Conversation:
        conversation = Conversation(self.persona.id, user_name=self.runtime.settings.user_name)
        conversation.platform, conversation.viewer_id = PLATFORM, LOCAL_USER  # memory of the one local viewer
        greetings = self.persona.greetings()
        if greetings:
            greeting = self.persona.render(greetings[0], conversation.user_name)
            conversation.add(Turn("assistant", greeting))
            self.say(f"{self.persona.name}: {greeting}\n")
        return conversation

    def say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def command(self, line: str) -> bool:
        """Handle a slash command; return False to quit."""
        name, _, arg = line[1:].partition(" ")
        if name in ("exit", "quit", "q"):
            return False
        if name == "reset":
            self.say("（对话已清空 / conversation reset）\n")
            self.conversation = self._new_conversation()
        elif name == "persona" and arg.strip():
            try:
                self.persona = self.runtime.personas.get(arg.strip())
            except PersonaError as exc:
                self.say(f"{exc}\n")
                return True
            self.say(f"（切换到 / switched to {self.persona.name}）\n")
            self.conversation = self._new_conversation()
        elif name == "personas":
            for persona in self.runtime.personas.list():
                self.say(f"  {persona.id:<16} {persona.name}\n")
        else:
            self.say(HELP + "\n")
        return True

    async def _ensure_stored(self, title: str) -> None:
        """Store the conversation with its first message (a chat that only shows the greeting stores nothing)."""
        store, conversation = self.runtime.store, self.conversation
        if store is None or (self.stored and self.stored[-1] == conversation.id):
            return
        await store.create_session(
            conversation.persona_id, owner=LOCAL_USER, platform=PLATFORM, viewer_id=conversation.viewer_id,
            user_name=conversation.user_name, title=title.strip()[:80], session_id=conversation.id,
        )  # fmt: skip
        for turn in conversation.turns:  # the greeting
            await store.save_turn(conversation, turn)
        self.stored.append(conversation.id)

    async def reply(self, text: str) -> None:
        try:
            await self._ensure_stored(text)
        except StoreError as exc:
            self.failed += 1
            self.say(f"（无法保存 / cannot store the conversation: {exc}）\n")
            return
        self.say(f"{self.persona.name}: ")
        stream = self.runtime.engine.reply(self.conversation, self.persona, text, source="cli")
        try:
            async for event in stream:
                if event.kind == "delta":
                    self.say(event.text)
        except asyncio.CancelledError:  # Ctrl-C: `finally` closes the stream, which stops the generation
            self.say(" …（已停止 / stopped）\n")
            raise
        except (BackendError, ContextBudgetError, StoreError) as exc:
            self.failed += 1
            self.say(f"\n（出错了 / error: {exc}）\n")
            return
        finally:
            await stream.aclose()
        self.say("\n")


def run(settings: Settings, *, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Run the chat loop until /exit or end of input; the exit status is 1 if any message got an error instead of a
    reply."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    interactive = stdin.isatty()
    with asyncio.Runner() as runner:
        runtime = runner.run(open_runtime(settings, with_stored_personas=True))
        try:
            persona = runtime.personas.get(settings.persona)
            if settings.backend == "local":
                out.write("（正在加载模型 / loading the model…）\n")
                out.flush()
            health = runner.run(runtime.backend.health())
            if not health.ok:
                out.write(f"（模型不可用 / backend unavailable: {health.detail}）\n")
            session = ChatSession(runtime, persona, out)
            session.say(HELP + "\n")
            while True:
                try:
                    line = input(f"{settings.user_name}> ") if interactive else stdin.readline()
                except KeyboardInterrupt:
                    session.say("\n")
                    continue
                except EOFError:
                    break
                if not interactive and line == "":
                    break
                line = line.strip()
                if not line:
                    continue
                if line.startswith("/"):
                    if not session.command(line):
                        break
                    continue
                try:
                    runner.run(session.reply(line))
                except KeyboardInterrupt:
                    # asyncio.Runner cancelled the reply task: the stream is closed, the partial reply kept.
                    continue
        finally:
            runner.run(runtime.aclose())
    if session.stored:
        session.say(f"（已保存 / saved: {', '.join(session.stored)}）\n")
    session.say("再见 / bye!\n")
    return 1 if session.failed else 0  # for scripts: some message got an error instead of a reply
