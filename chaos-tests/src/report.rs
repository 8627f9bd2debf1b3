//! `report.html` (being written).
