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
    # The gateway: host name or address, CoAP over UDP. The first retransmission of an
    # unanswered request waits 1-1.5 times the ACK timeout (RFC 7252's default 2 s); raise
    # it on slow cellular links (NB-IoT), lower it on a LAN.
    "gateway_host": "",
    "gateway_port": 5683,
    "coap_ack_timeout_ms": 2000,
    # What becomes a record (smart reporting, uplink.py): a position when this many GPS
    # seconds passed since the last one (the longer period while stopped, under 5 km/h),
    # or the van moved this far, turned this much or changed speed this much. The gateway
    # can set them per device (`vantrack devices reporting`).
    "report_period_s": 30,
    "report_stopped_period_s": 300,
    "report_distance_m": 300,
    "report_angle_deg": 15,
    "report_speed_delta_kmh": 10,
    # A report holds at most this many records and is sent once a record waited this many
    # GPS seconds, or at once for an event.
    "report_max_records": 10,
    "report_max_age_s": 10,
    # The flash queue's bound (queue.py): past it, old positions are thinned out. After
    # an outage the backlog goes out a report at a time, this many ms apart.
    "queue_kb": 1024,
    "backlog_pace_ms": 100,
    # GPS UART: ESP32 UART2 on GPIO16 (RX) / GPIO17 (TX), 9600 baud is the factory
    # setting of u-blox NEO and Quectel L76 modules.
    "gps_uart": 2,
    "gps_rx": 16,
    "gps_tx": 17,
    "gps_baud": 9600,
    "status_led": 2,
    # Wi-Fi station (ESP32): the access point the van joins, e.g. the depot's or a mobile
    # hotspot's; no SSID, no Wi-Fi. The password never appears in the log. wifi_country
    # (ISO 3166 code, e.g. "DE") sets the channels allowed there; empty: the chip's default.
    "wifi_ssid": "",
    "wifi_password": "",
    "wifi_country": "",
    # Watchdog timeout in seconds: a van whose GPS reader or sender hangs resets after
    # this long. 0: the board's default (30 s on the ESP32, off on the sim rig); below
    # 0: off (bench work at the REPL); at least 8.
    "wdt_s": 0,
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
