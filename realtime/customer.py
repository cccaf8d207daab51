"""`/v1/ws/customer`: one conversation per connection, resumable by token and seq."""

from __future__ import annotations

from typing import Any

from realtime import protocol
from realtime.connection import Connection
from warmline import logs
from warmline.bus.base import Message
from warmline.errors import BadRequest, Forbidden
from warmline.models import Conversation


class CustomerConnection(Connection):
    role = "customer"
    schema = protocol.CUSTOMER_FRAMES

    conversation_id: str | None = None

    async def handle(self, frame: Message, ref: str | None) -> None:
        kind = frame["type"]
        service = self.runtime.conversations
        if kind == "ping":
            self.pong(ref)
        elif kind == "hello":
            await self._hello(frame, ref)
        else:
            assert self.conversation_id is not None
            if kind == "message":
                await self.runtime.check_rate(self, "message")
                event = await service.customer_message(
                    self.conversation_id, frame["id"], frame["text"]
                )
                self.ack(ref, id=frame["id"], seq=event.seq)
            elif kind == "typing":
                if await self.runtime.allow_typing(self):
                    await service.typing(self.conversation_id, "customer", frame["on"], self.id)
            elif kind == "request_human":
                await service.request_human(self.conversation_id)
                self.ack(ref, of="request_human")
            elif kind == "rate":
                await service.rate(self.conversation_id, frame["score"], frame.get("comment") or "")
                self.ack(ref, of="rate")

    async def _hello(self, frame: Message, ref: str | None) -> None:
        if self.authenticated:
            raise BadRequest("this connection already has a conversation")
        service = self.runtime.conversations
        tenant = frame["tenant"]
        if not await self.runtime.check_origin(self.ws, tenant):
            raise Forbidden("origin not allowed")  # a failed hello closes with 1008
        token = frame.get("token")
        if token:
            conversation, token = await service.resume(tenant, token)
            last_seq = int(frame.get("last_seq") or 0)
        else:
            await self.runtime.check_rate(self, "conversation", tenant)
            conversation, token = await service.start(tenant)
            last_seq = 0
        self.authenticated = True
        self.tenant = conversation.tenant
        logs.bind(conversation_id=conversation.id)
        self.conversation_id = conversation.id
        welcome: dict[str, Any] = {
            "type": "welcome",
            "conversation_id": conversation.id,
            "token": token,
            "state": conversation.state,
            "last_seq": conversation.last_seq,
            "heartbeat_s": self.config.heartbeat_s,
        }
        if ref is not None:
            welcome["ref"] = ref
        self.send(welcome)
        await self.follow(conversation.id, min(last_seq, conversation.last_seq))
        await self._send_position(conversation)

    async def _send_position(self, conversation: Conversation) -> None:
        if conversation.state != "queued":
            return
        position = await self.runtime.dispatcher.position_of(conversation)
        if position is not None:
            self.send(position)

    def outgoing(self, message: Message) -> Message | None:
        if message.get("type") == "typing" and message.get("role") == "customer":
            return None  # customers only see the other side typing
        return super().outgoing(message)
