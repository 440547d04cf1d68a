"""camtrap.redact: the one redaction of credentials in URIs and messages. (Config dumps, model
files and errors that show a URI redacted: test_config, test_models, tests/faults.)"""

from camtrap.redact import redact_text


def test_redact_text_redacts_every_uri_in_a_message():
    text = "cannot read https://u:CANARY123@h/x?sig=CANARY123: 403 (see s3://b/k?t=CANARY123)."
    assert redact_text(text) == (
        "cannot read https://REDACTED@h/x?sig=REDACTED: 403 (see s3://b/k?t=REDACTED)."
    )
