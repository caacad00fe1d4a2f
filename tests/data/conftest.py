"""Shared fixtures for the data-loader tests.

* Real open data (``../shared/data`` next to the repository root) is located relative to this
  file; tests that need it skip with a reason when it is absent.
* Real-data loads are built once per session into a temporary cache folder.
* ``TARDIFF_CACHE_DIR`` points every test at a temporary folder, so no test writes to
  ``~/.cache/tardiff``.
* Small fixture tables in each source's real schema are written by factory fixtures.
"""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tardiff_common.data.registry import load_sites

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_default_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TARDIFF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "default-cache"))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (../shared/data not available)")
    return path


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session-cache")


@pytest.fixture(scope="session")
def eicu_demo_dir() -> Path:
    return _shared("eicu_demo")


@pytest.fixture(scope="session")
def mimic3_demo_dir() -> Path:
    return _shared("mimic3_demo")


@pytest.fixture(scope="session")
def physionet_dir() -> Path:
    return _shared("physionet2012")


def _load_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sites(*args, **kwargs)


@pytest.fixture(scope="session")
def yaib_sites(eicu_demo_dir, session_cache):
    return _load_quiet("eicu_yaib", eicu_demo_dir, min_site_records=0, cache_dir=session_cache)


@pytest.fixture(scope="session")
def mimic3_sites(mimic3_demo_dir, session_cache):
    return _load_quiet("mimic3", mimic3_demo_dir, min_site_records=0, cache_dir=session_cache)


@pytest.fixture(scope="session")
def physionet_sites(physionet_dir, session_cache):
    return _load_quiet("physionet2012", physionet_dir, min_site_records=0, cache_dir=session_cache)


# ---------------------------------------------------------------------------------------------
# Fixture tables in the real schemas
# ---------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict] | pd.DataFrame, columns: list[str] | None = None) -> Path:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=columns)
    frame.to_csv(path, index=False, compression="gzip" if path.name.endswith(".gz") else None)
    return path


EICU_PATIENTS = [
    # stay, hospital, unitdischargeoffset (min), hospitaldischargestatus
    (1, 10, 5000, "Expired"),
    (2, 10, 100, "Alive"),
    (3, 10, 2000, None),  # empty status: unknown outcome for mortality
    (4, 20, 4321, "Alive"),
    (5, 20, 300, "Alive"),  # no usable vitals
    (6, 30, 60, "Expired"),  # hospital with empty region
]

# stay, observationoffset (min), heartrate, respiration, sao2
EICU_VITALS = [
    (1, 0, 80, 12, 95),
    (1, 4, 90, None, 97),  # same 5-min bin as offset 0: averaged
    (1, 10, 400, 15, None),  # HR 400 is impossible: dropped
    (1, 22, 100, None, None),
    (1, -5, 70, 30, 90),  # before unit admission: outside the window
    (1, 1440, 70, 30, 90),  # bin 288: outside the 24 h window
    (1, 1439, 60, None, None),  # last bin (287)
    (2, 30, 70, None, None),  # leading gap in bins 0..5 -> backward fill
    (2, 100, None, None, 99),
    (3, 0, 200, 40, 88),  # stay 3 is dropped for mortality (unknown outcome)
    (4, 5, 0, None, 30),  # impossible HR and SpO2: HR never observed -> median
    (4, 50, None, 20, None),
    (5, 2000, 80, 20, 95),  # after 24 h only -> no vitals in the window
    (5, 10, None, None, None),
    (6, 0, 75, 18, 100),  # SpO2 100 is the inclusive upper limit
]


@pytest.fixture
def eicu_vital_rows():
    return list(EICU_VITALS)


@pytest.fixture
def eicu_tables(tmp_path):
    """Factory: write the full-schema eICU fixture; returns the folder."""

    def write(
        folder: Path | None = None,
        *,
        vital_name: str = "vitalPeriodic.csv.gz",
        patients=EICU_PATIENTS,
        vitals=EICU_VITALS,
        drop_vital_columns=(),
        drop_patient_columns=(),
    ) -> Path:
        folder = folder or tmp_path / "eicu"
        folder.mkdir(parents=True, exist_ok=True)
        pat = pd.DataFrame(
            patients, columns=["patientunitstayid", "hospitalid", "unitdischargeoffset", "hospitaldischargestatus"]
        )
        pat["gender"] = "Female"
        pat["unitdischargestatus"] = "Alive"
        write_csv(folder / "patient.csv.gz", pat.drop(columns=list(drop_patient_columns)))
        write_csv(
            folder / "hospital.csv.gz",
            pd.DataFrame(
                {
                    "hospitalid": [10, 20, 30],
                    "numbedscategory": ["<100"] * 3,
                    "teachingstatus": [False] * 3,
                    "region": ["Midwest", "South", None],
                }
            ),
        )
        vit = pd.DataFrame(
            vitals, columns=["patientunitstayid", "observationoffset", "heartrate", "respiration", "sao2"]
        )
        vit.insert(0, "vitalperiodicid", np.arange(len(vit)) + 1000)
        vit["temperature"] = np.nan
        vit["systemicsystolic"] = 120.0
        write_csv(folder / vital_name, vit.drop(columns=list(drop_vital_columns)))
        return folder

    return write


YAIB_CHANNELS = ["hr", "resp", "o2sat", "sbp", "dbp", "map", "temp"]


@pytest.fixture
def yaib_tables(tmp_path):
    """Factory: a tiny ``eicu_demo``-like folder with a YAIB hourly extract."""

    def write(extract: str = "mortality24", *, hours: int = 25, drop_columns=()) -> Path:
        folder = tmp_path / "eicu_demo"
        (folder / "yaib_hourly" / extract).mkdir(parents=True, exist_ok=True)
        rows = []
        for stay in (1, 2, 3, 4):
            for h in range(hours):
                row = {"stay_id": stay, "time": pd.Timedelta(hours=h)}
                row.update({c: np.nan for c in YAIB_CHANNELS})
                rows.append(row)
        dyn = pd.DataFrame(rows)
        dyn["stay_id"] = dyn["stay_id"].astype(np.int32)
        dyn["time"] = dyn["time"].astype("timedelta64[s]")
        dyn["glu"] = 100.0

        def put(stay, hour, col, value):
            dyn.loc[(dyn.stay_id == stay) & (dyn.time == pd.Timedelta(hours=hour)), col] = value

        put(1, 0, "hr", 80.0)
        put(1, 3, "hr", 90.0)
        put(1, 5, "hr", 0.0)  # impossible: dropped
        put(1, 24, "hr", 120.0)  # hour 24: outside the 24-step grid
        put(1, 2, "temp", 37.5)
        put(2, 10, "resp", 18.0)
        put(3, 1, "o2sat", 97.0)  # stay 3 has an empty discharge status
        put(4, 0, "sbp", 110.0)
        for c in ("hr", "resp", "o2sat", "sbp", "dbp", "map", "temp"):
            put(2, 12, c, {"hr": 70, "resp": 20, "o2sat": 99, "sbp": 100, "dbp": 60, "map": 75, "temp": 36.9}[c])
        dyn = dyn.drop(columns=list(drop_columns))
        dyn.to_parquet(folder / "yaib_hourly" / extract / "dyn.parquet")
        write_csv(
            folder / "patient.csv.gz",
            pd.DataFrame(
                {
                    "patientunitstayid": [1, 2, 3, 4, 99],
                    "hospitalid": [10, 20, 20, 30, 10],
                    "unitdischargeoffset": [5000, 100, 200, 4400, 10],
                    "hospitaldischargestatus": ["Expired", "Alive", None, "Alive", "Alive"],
                }
            ),
        )
        write_csv(
            folder / "hospital.csv.gz", pd.DataFrame({"hospitalid": [10, 20, 30], "region": ["Midwest", "South", None]})
        )
        return folder

    return write


MIMIC_STAYS = pd.DataFrame(
    {
        "ROW_ID": [1, 2, 3, 4],
        "SUBJECT_ID": [7, 8, 9, 10],
        "HADM_ID": [1, 2, 3, 4],
        "ICUSTAY_ID": [100, 101, 102, 103],
        "FIRST_CAREUNIT": ["MICU", "SICU", "MICU", "CCU"],
        "INTIME": ["2100-01-01 00:00:00", "2100-02-01 12:00:00", "2100-03-01 00:00:00", "2100-04-01 00:00:00"],
        "LOS": [4.0, 1.0, 5.0, 2.0],
    }
)
MIMIC_ADMISSIONS = pd.DataFrame(
    {"ROW_ID": [1, 2, 3, 4], "HADM_ID": [1, 2, 3, 4], "HOSPITAL_EXPIRE_FLAG": [1, 0, None, 0]}
)

# icustay_id, itemid, charttime, valuenum, error
MIMIC_EVENTS_1 = [
    (100, 211, "2100-01-01 00:30:00", 80, None),
    (100, 220045, "2100-01-01 00:45:00", 90, 0),  # same hour (0): averaged -> 85
    (100, 678, "2100-01-01 01:10:00", 98.6, None),  # °F -> 37 °C
    (100, 223762, "2100-01-01 01:50:00", 37.4, 0),  # °C; hour 1 mean 37.2
    (100, 646, "2100-01-01 23:59:00", 95, None),  # last hour (23)
    (100, 211, "2100-01-02 00:00:00", 70, None),  # hour 24: outside the grid
    (100, 211, "2099-12-31 23:00:00", 70, None),  # before intime
    (100, 618, "2100-01-01 02:00:00", 0, None),  # RR 0: impossible
    (100, 220045, "2100-01-01 03:00:00", 150, 1),  # error flag: discarded
    (100, 1, "2100-01-01 03:00:00", 33, None),  # not a vital itemid
]
MIMIC_EVENTS_2 = [
    (101, 51, "2100-02-01 14:20:00", 120, None),  # SBP at hour 2
    (101, 211, "2100-02-01 12:00:00", 100, None),  # HR at hour 0
    (101, 8368, "2100-02-01 14:20:00", 70, None),  # DBP
    (101, 220052, "2100-02-01 15:00:00", 85, None),  # MBP at hour 3
    (101, 220210, "2100-02-01 12:59:59", 16, None),  # RR at hour 0
    (102, 211, "2100-03-01 01:00:00", 60, None),  # stay 102: unknown outcome
    (103, 211, "2100-04-03 00:00:00", 60, None),  # stay 103: only after 24 h -> no vitals
]


@pytest.fixture
def mimic_tables(tmp_path):
    """Factory: MIMIC-III fixture (upper-case table and column names, chartevents in 2 parts)."""

    def write(*, drop_event_columns=(), stays=MIMIC_STAYS, parts=(MIMIC_EVENTS_1, MIMIC_EVENTS_2)) -> Path:
        folder = tmp_path / "mimic"
        folder.mkdir(exist_ok=True)
        write_csv(folder / "ICUSTAYS.csv.gz", stays)
        write_csv(folder / "ADMISSIONS.csv", MIMIC_ADMISSIONS)
        for i, events in enumerate(parts, start=1):
            ev = pd.DataFrame(events, columns=["ICUSTAY_ID", "ITEMID", "CHARTTIME", "VALUENUM", "ERROR"])
            ev.insert(0, "ROW_ID", np.arange(len(ev)))
            ev["VALUE"] = ev["VALUENUM"].astype(str)
            write_csv(folder / f"CHARTEVENTS_{i}.csv.gz", ev.drop(columns=list(drop_event_columns)))
        return folder

    return write


def physionet_record(record_id: int, icutype: int, rows: list[tuple[str, str, float]]) -> bytes:
    lines = [
        "Time,Parameter,Value",
        f"00:00,RecordID,{record_id}",
        "00:00,Age,70",
        "00:00,Gender,1",
        "00:00,Height,-1",
        f"00:00,ICUType,{icutype}",
        "00:00,Weight,80",
    ]
    lines += [f"{t},{p},{v:g}" for t, p, v in rows]
    return ("\n".join(lines) + "\n").encode()


PHYSIONET_RECORDS = {
    1: physionet_record(
        1,
        1,
        [
            ("00:30", "HR", 80),
            ("00:45", "HR", 90),  # hour 0 mean 85
            ("02:10", "HR", 100),
            ("00:10", "Temp", -1),  # -1 = missing
            ("47:59", "Temp", 37),  # last hour (47)
            ("48:00", "HR", 50),  # outside the 48 h grid
            ("03:00", "NISysABP", 0),  # impossible: dropped
            ("03:00", "Glucose", 120),
        ],
    ),
    2: physionet_record(2, 3, [("05:00", "HR", 70), ("01:00", "RespRate", 12)]),
    3: physionet_record(3, 3, [("01:00", "Glucose", 100), ("02:00", "BUN", 20)]),  # no vitals
    4: physionet_record(4, 4, [("01:00", "HR", 88)]),  # absent from Outcomes
    5: physionet_record(5, -1, [("01:00", "HR", 88)]),  # ICUType missing
    6: physionet_record(
        6, 2, [("00:00", "HR", 75), ("10:00", "NIMAP", 80), ("10:00", "NISysABP", 120), ("10:00", "NIDiasABP", 60)]
    ),
}
PHYSIONET_OUTCOMES = pd.DataFrame(
    {
        "RecordID": [1, 2, 3, 5, 6],
        "SAPS-I": [10, 12, 8, 9, 7],
        "SOFA": [3, 4, 2, 1, 1],
        "Length_of_stay": [5, 2, 10, 4, -1],
        "Survival": [3, -1, -1, -1, -1],
        "In-hospital_death": [1, 0, 0, 0, 0],
    }
)


@pytest.fixture
def physionet_tables(tmp_path):
    """Factory: PhysioNet 2012 fixture as ``set-a.tar.gz`` (or a folder ``set-a/``)."""

    def write(*, as_folder: bool = False, records=None) -> Path:
        records = PHYSIONET_RECORDS if records is None else records
        folder = tmp_path / "physionet"
        folder.mkdir(exist_ok=True)
        if as_folder:
            (folder / "set-a").mkdir(exist_ok=True)
            for rid, data in records.items():
                (folder / "set-a" / f"{rid}.txt").write_bytes(data)
        else:
            with tarfile.open(folder / "set-a.tar.gz", "w:gz") as tar:
                info = tarfile.TarInfo("set-a")
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                for rid, data in records.items():
                    info = tarfile.TarInfo(f"set-a/{rid}.txt")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        PHYSIONET_OUTCOMES.to_csv(folder / "Outcomes-a.txt", index=False)
        return folder

    return write
