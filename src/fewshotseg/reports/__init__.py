"""Reports of finished runs: `report.write_report` writes report.md with tables and figures."""
