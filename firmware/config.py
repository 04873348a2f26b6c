# Device configuration: defaults, overlaid by config.json in the flash directory.
#
# A van must keep tracking with a broken or missing config file: bad JSON, wrong types
# or unknown keys are logged with the reason and the defaults are used for those keys.
# Writing the file (provisioning) is done from the laptop side, not here.
import json

import log

DEFAULTS = {
    # Identity from the gateway's registry (`vantrack devices add`): numeric id and the
    # 128-bit key (hex) that signs reports. device_id 0 = not provisioned: track, don't send.
    "device_id": 0,
    "device_name": "",
    "key": "",
    # The gateway: host name or address, CoAP over UDP.
    "gateway_host": "",
    "gateway_port": 5683,
    # A report closes at this many records or this many GPS seconds after its first.
    "report_max_records": 10,
    "report_max_age_s": 10,
    # GPS UART: ESP32 UART2 on GPIO16 (RX) / GPIO17 (TX), 9600 baud is the factory
    # setting of u-blox NEO and Quectel L76 modules.
    "gps_uart": 2,
    "gps_rx": 16,
    "gps_tx": 17,
    "gps_baud": 9600,
    "status_led": 2,
    # Echo every fix on the console (useful on the bench and in the demo, noisy in a van).
    "echo_fixes": False,
}


def load(flash_dir, overrides=None):
    cfg = dict(DEFAULTS)
    path = flash_dir + "/config.json"
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError:
        data = {}  # not provisioned yet: defaults
    except ValueError as e:
        log.error("config", "bad_json", path=path, error=str(e))
        data = {}
    if not isinstance(data, dict):
        log.error("config", "not_an_object", path=path)
        data = {}
    if overrides:
        data.update(overrides)
    for key, value in data.items():
        if key not in DEFAULTS:
            log.warn("config", "unknown_key", key=key)
        elif type(value) is not type(DEFAULTS[key]):
            log.error("config", "wrong_type", key=key, expected=type(DEFAULTS[key]).__name__)
        else:
            cfg[key] = value
    return cfg
