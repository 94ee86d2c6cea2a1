"""Deleting a conversation whose tickets may still be generating: each ticket that reached the
upstream must first end, so that it leaves its usage row and releases its reservation.
Must not use `request` or `g`.
"""

from __future__ import annotations

import time

import gevent
from flask import Flask

from . import conversations, generation, tickets
from .errors import Conflict, ErrorCode
from .models import Conversation, TicketStatus

# How long a delete waits for the producers it cancelled to end their tickets (a cancel
# reaches another worker within RELAY_POLL_MS without Redis, at once with it).
_DELETE_WAIT_SECONDS = 3.0


def delete_conversation(app: Flask, conversation: Conversation) -> None:
    """Delete a conversation once its tickets have ended, so that each that reached the upstream
    leaves its usage row and releases its reservation: cancel them, give their producers a
    moment to end them with what they spent, then end from the store any still running."""
    for _ in range(3):  # again only if a ticket of it was started meanwhile
        active = tickets.active_tickets(conversation.id)
        for ticket in active:
            generation.cancel(ticket.id, "its conversation is deleted", app)
        running = [ticket.id for ticket in active if ticket.status == TicketStatus.RUNNING]
        deadline = time.monotonic() + _DELETE_WAIT_SECONDS
        while running and time.monotonic() < deadline:
            gevent.sleep(0.05)
            running = [ticket_id for ticket_id in running
                       if (state := tickets.read_state(ticket_id)) is not None
                       and state.status == TicketStatus.RUNNING]
        for ticket_id in running:
            tickets.end_for_deletion(ticket_id)
        if conversations.delete_conversation(conversation):
            return
    raise Conflict("This conversation is still generating an answer; try again.",
                   code=ErrorCode.CONVERSATION_BUSY)
