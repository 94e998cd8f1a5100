"""The emulator's route handlers, one module per API: the Chats API (chats, messages), REST v4, and the admin
surface. Each handler takes the request and its body already read as JSON, and returns the answer or raises
`ApiError`; the middleware around it does the rest."""
