# Stand-ins for the ESP32's `machine` and `network` modules, so board_esp32.py runs under
# the unix port in tests (test_board_esp32.py registers this one module as both). They
# record what the board did; the Wi-Fi station joins or fails as a test scripts it.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
cause = WDT_RESET
wdts = []  # every WDT armed: [timeout, feeds]
pins = {}


def reset_cause():
    return cause


def soft_reset():
    raise SystemExit(3)


class UART:
    def __init__(self, n, **kw):
        self.n = n
        self.kw = kw


class Pin:
    OUT = 1

    def __init__(self, n, mode):
        self.n = n
        self.v = []
        pins[n] = self

    def value(self, v):
        self.v.append(v)


class WDT:
    def __init__(self, timeout):
        self.rec = [timeout, 0]
        wdts.append(self.rec)

    def feed(self):
        self.rec[1] += 1


STA_IF = 0
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_WRONG_PASSWORD = 202
STAT_NO_AP_FOUND = 201
STAT_BEACON_TIMEOUT = 200
STAT_HANDSHAKE_TIMEOUT = 204
STAT_ASSOC_FAIL = 203
STAT_CONNECT_FAIL = 203
countries = []
# What each connect() leads to, in turn (the last one repeats): a STAT_* code.
outcomes = [STAT_GOT_IP]
connects = []  # ticks_ms() of each connect()
wlans = []


def country(code):
    countries.append(code)


class WLAN:
    def __init__(self, i):
        wlans.append(self)
        self.st = STAT_IDLE
        self.on = False
        self.conf = {}

    def active(self, on):
        self.on = on

    def config(self, **kw):
        self.conf.update(kw)

    def connect(self, ssid, key):
        import time

        connects.append(time.ticks_ms())
        self.st = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]

    def disconnect(self):
        pass

    def isconnected(self):
        return self.st == STAT_GOT_IP

    def status(self, param=None):
        return -60 if param == "rssi" else self.st

    def ifconfig(self):
        return ("192.168.4.7", "255.255.255.0", "192.168.4.1", "192.168.4.1")

    def lose(self, why):
        self.st = why
