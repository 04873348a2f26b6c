# The ESP32 board layer under the unix port, on stand-ins for `machine` and `network`
# (esp32fake.py): the boot line's reset cause and summary, the Wi-Fi task's backoff and
# log, the watchdog armed and fed by the supervisor's looks, the LED's patterns and the
# end of the loader's trial.
import sys

import esp32fake

sys.modules["machine"] = esp32fake
sys.modules["network"] = esp32fake
import asyncio  # noqa: E402
import time  # noqa: E402

import board_esp32  # noqa: E402
import config  # noqa: E402
import log  # noqa: E402
import mptest  # noqa: E402

lines = []


def _rec(level):
    def f(topic, event, **kv):
        lines.append(" ".join([level, topic, event] + ["%s=%s" % (k, kv[k]) for k in sorted(kv)]))

    return f


log.info = _rec("I")
log.warn = _rec("W")
log.error = _rec("E")


def _board(**cfg):
    b = board_esp32.Board()  # its mkdir("/data") fails here, as it may on a van: ignored
    c = dict(config.DEFAULTS)
    c.update(cfg)
    b.configure(c)
    return b


def test_describe_names_the_reset_cause_and_never_the_wifi_password():
    esp32fake.cause = esp32fake.WDT_RESET
    d = _board(wifi_ssid="depot", wifi_password="s3cret").describe()
    mptest.eq(d["reset_cause"], "wdt")
    mptest.eq(d["wifi"], "depot")
    mptest.eq(d["wdt_s"], 30)
    mptest.true("s3cret" not in repr(d), d)
    for c, name in ((1, "power_on"), (2, "hard"), (4, "deepsleep"), (5, "soft"), (9, "9")):
        esp32fake.cause = c
        mptest.eq(_board().describe()["reset_cause"], name)


def test_watchdog_timeout_from_config():
    mptest.eq(_board()._wdt_ms, 30000)  # 0: the default
    mptest.eq(_board(wdt_s=60)._wdt_ms, 60000)
    mptest.eq(_board(wdt_s=2)._wdt_ms, 8000)  # the supervisor looks every 2 s
    mptest.eq(_board(wdt_s=-1)._wdt_ms, 0)  # off


def _play(b, pattern, alive):
    # One look, with the LED's sleeps cut short.
    real = asyncio.sleep_ms
    asyncio.sleep_ms = lambda ms: real(1)
    try:
        asyncio.run(b.status(pattern, alive))
    finally:
        asyncio.sleep_ms = real


def test_watchdog_is_armed_at_the_first_look_and_fed_only_when_alive():
    del esp32fake.wdts[:]
    b = _board(wdt_s=45)
    mptest.eq(esp32fake.wdts, [])  # not at boot
    _play(b, "no_fix", False)
    mptest.eq(esp32fake.wdts, [[45000, 0]])  # armed, not fed: a task is stalled
    _play(b, "no_fix", True)
    _play(b, "fix", True)
    mptest.eq(esp32fake.wdts, [[45000, 2]])
    b = _board(wdt_s=-1)
    _play(b, "fix", True)
    mptest.eq(len(esp32fake.wdts), 1)  # switched off: never armed


def test_led_patterns():
    b = _board(status_led=4)
    led = esp32fake.pins[4]
    for pattern, want in (("fix", [1, 0]), ("no_fix", [1, 0]), ("no_link", [1, 0, 1, 0])):
        del led.v[:]
        _play(b, pattern, True)
        mptest.eq(led.v, want, pattern)
    mptest.eq(sum(board_esp32._PATTERNS["no_link"]), 2000)
    b = _board(status_led=4, wifi_ssid="depot")  # Wi-Fi down: a fix shows no link
    _play(b, "fix", True)
    mptest.eq(esp32fake.pins[4].v, [1, 0, 1, 0])


def test_confirm_boot_removes_the_trial_mark_once():
    board_esp32._TRIAL = "/tmp/vantrack-esp32-boot.trial"
    with open(board_esp32._TRIAL, "w") as f:
        f.write("1")
    b = _board()
    del lines[:]
    b.confirm_boot()
    b.confirm_boot()
    mptest.eq(lines, ["I boot confirmed"])


def test_no_ssid_no_network_task():
    mptest.eq(_board().network_task, None)
    mptest.eq(_board().online, True)


def test_wifi_joins_with_backoff_logs_state_changes_and_rejoins_after_a_loss():
    f = esp32fake
    del f.connects[:]
    del f.wlans[:]
    f.outcomes[:] = [f.STAT_NO_AP_FOUND, f.STAT_NO_AP_FOUND, f.STAT_WRONG_PASSWORD, f.STAT_GOT_IP]
    b = _board(wifi_ssid="depot", wifi_password="s3cret", wifi_country="DE")
    mptest.eq(b.online, False)
    del lines[:]

    async def main():
        net = asyncio.create_task(b.network_task)
        while not b.online:
            await asyncio.sleep_ms(50)
        mptest.eq(lines, ["W net down reason=no_ap_found retry_ms=1000",
                          "W net down reason=wrong_password retry_ms=4000",
                          "I net up ip=192.168.4.7 rssi=-60"])  # fmt: skip
        c = f.connects
        gaps = [time.ticks_diff(c[i + 1], c[i]) for i in range(3)]
        for i, want in enumerate((1000, 2000, 4000)):  # 1 s, doubling (no zip(strict=))
            mptest.true(want <= gaps[i] < want + 300, gaps)
        del lines[:]
        f.wlans[0].lose(f.STAT_BEACON_TIMEOUT)  # the van drove off
        await asyncio.sleep_ms(1100)
        mptest.eq(lines, ["W net down reason=beacon_timeout", "I net up ip=192.168.4.7 rssi=-60"])
        mptest.eq(b.online, True)
        net.cancel()

    asyncio.run(main())
    mptest.eq(f.countries, ["DE"])
    mptest.eq(f.wlans[0].conf, {"reconnects": 0})
    mptest.true("s3cret" not in " ".join(lines))


mptest.main(globals())
