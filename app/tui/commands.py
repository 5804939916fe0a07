"""Command palette (ctrl+p): every key binding of the current screen and the app, by its description."""

from __future__ import annotations

from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider


def screen_bindings(app, screen) -> list[tuple[Binding, object]]:
    """The bindings a person can use on ``screen``, each with the node that runs it:
    the screen's own first, then the app's (no duplicates)."""
    seen, out = set(), []
    for owner in (screen, app):
        for b in getattr(type(owner), "BINDINGS", []):
            if not isinstance(b, Binding) or b.action in seen or b.action == "command_palette":
                continue
            seen.add(b.action)
            out.append((b, owner))
    return out


def key_label(app, binding: Binding) -> str:
    return ", ".join(app.get_key_display(Binding(k.strip(), "")) for k in binding.key.split(","))


class ActionsProvider(Provider):
    """Offers each binding of the screen the palette was opened on."""

    def _commands(self):
        for b, owner in screen_bindings(self.app, self.screen):
            yield f"{b.description} ({key_label(self.app, b)})", b, partial(owner.run_action, b.action)

    async def discover(self) -> Hits:
        for text, b, run in self._commands():
            yield DiscoveryHit(text, run, help=b.tooltip or None)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, b, run in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), run, help=b.tooltip or None)
