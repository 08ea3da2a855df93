//! Write-ahead log and write-behind persistence (see docs/ARCHITECTURE.md).
