// The object a subscription handler gets, built here in one call instead of field by
// field from the wasm (smaller). `event` is a topic event's name, the last segment of
// its key `<channel>.event.<a>.<b>…` (`warren_protocol::amqp::keys::event_name` in
// Rust), and `undefined` for other deliveries. Types: `Delivery` in types.rs.
export function delivery(message, channel, routingKey, messageId, headers, redelivered) {
  const k = routingKey.split(".");
  return { message, channel, routingKey, event: k[1] == "event" && k[2] ? k.pop() : void 0, messageId, headers, redelivered };
}

// Calls a subscription's status listener (`subscribe`'s `onStatus`): `status` 0, 1, 2 is
// `pending`, `active`, `error`; `error` the WarrenError of an `error`, else null.
export function subscriptionStatus(listener, status, error) {
  try {
    listener(["pending", "active", "error"][status], error);
  } catch (e) {
    console.error(e);
  }
}
