"""The official request vectors of amojo-api.md §2.6 (AMO-STEP), byte for byte."""

import json

SECRET = "f2d7f8704eff95087ed45b23ba99c0b5aac8278e"
CHANNEL = "344a5002-f8ca-454d-af3d-396180102ac7"
ACCOUNT = "52e591f7-c98f-4255-8495-827210138c81"
SCOPE = f"{CHANNEL}_{ACCOUNT}"


def php_json(value: object) -> bytes:
    """PHP json_encode: compact, `/` escaped as `\\/`, non-ASCII as \\uXXXX."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/").encode()


B1 = b'{"account_id":"52e591f7-c98f-4255-8495-827210138c81","title":"ChatsIntegration","hook_api_version":"v2"}'
B2 = (
    b'{"event_type":"new_message","payload":{"timestamp":1639660529,"msec_timestamp":1639660529379,'
    b'"msgid":"my_int-5f2836a8ca481","conversation_id":"my_int-d5a421f7f218","sender":{"id":"my_int-1376265f-86df-'
    b'4c49-a0c3-a4816df41af8","avatar":"https:\\/\\/images.pexels.com\\/photos\\/10050979\\/pexels-photo-10050979.'
    b'jpeg?auto=compress&cs=tinysrgb&dpr=2&w=500","profile":{"phone":"+79151112233","email":"example.client@example.'
    b'com"},"profile_link":"https:\\/\\/example.com\\/profile\\/example.client","name":"\\u0412\\u0430\\u0441\\u044f '
    b'\\u043a\\u043b\\u0438\\u0435\\u043d\\u0442"},"message":{"type":"text","text":"\\u0421\\u043e\\u043e\\u0431\\u0449'
    b'\\u0435\\u043d\\u0438\\u0435 \\u043e\\u0442 \\u043a\\u043b\\u0438\\u0435\\u043d\\u0442\\u0430"},"silent":false}}'
)
B3 = php_json({
    "conversation_id": "my_int-8e3e7640-49af-4448-a2c6-d5a421f7f217",
    "source": {"external_id": "78001234567"},
    "user": {
        "id": "my_int-1376265f-86df-4c49-a0c3-a4816df41af9",
        "avatar": "https://example.com/users/avatar.png",
        "name": "Имя клиента",
        "profile": {"phone": "+79151112233", "email": "example.client@example.com"},
        "profile_link": "https://example.com/profile/example.client",
    },
})

# (name, method, path, date, body, content-md5, x-signature)
VECTORS = [
    ("V1 connect", "POST", f"/v2/origin/custom/{CHANNEL}/connect", "Wed, 15 Dec 2021 23:12:55 +0000", B1,
     "2fbcb3c652b61e24e004daddfc73d0ce", "81211856ce0c5095f3e1a90c0a38dc9d736cfd55"),
    ("V2 new_message", "POST", f"/v2/origin/custom/{SCOPE}", "Thu, 16 Dec 2021 13:15:29 +0000", B2,
     "223ef85def871bc7cb58aa6f02f0a26e", "29b49e9eaf03f13a66ecaff315f2855b31b25eee"),
    ("V3 create chat", "POST", f"/v2/origin/custom/{SCOPE}/chats", "Thu, 16 Dec 2021 23:22:49 +0000", B3,
     "5139e573382c0eae38f476822abb2014", "a601e486d694c8e7e8a5b637660f949f8bb7efaf"),
]
