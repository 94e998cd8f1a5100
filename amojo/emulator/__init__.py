"""The local amoCRM: the Chats API and a REST v4 subset, with strict signatures and fault injection.

Where things are:
- `app.Emulator`: one emulated account (config, store, faults, clock, request log), and the Python API for tests;
- `routes`: the URL map, and the middleware each API's routes are wrapped in, outermost first;
- `middleware/`: one job per module: request log, exception boundary, body limit, signature gate, token gate, rate
  limit, scripted faults, injected faults, lost answers;
- `handlers/`: the route handlers per API: `chats` and `messages` (Chats API), `rest` (REST v4), `admin`
  (`/_emulator/...`);
- apart from HTTP: `store` and `schema` (the SQLite state), `participants`, `contacts`, `injector` (what the faults
  decide), `requestlog`, `inputs` (the typed checks of a body), `verify` (amojo's signature check);
- `envelopes`: each API's answer shapes; `config`: what the emulator is told at start, `users` its users file;
  `server`: running it;
- for people: `views` (amoCRM's view of the account as pages under `/_emulator/ui`), `viewmodel` (what they show),
  `templates/`.
"""
