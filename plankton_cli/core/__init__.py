"""Foundation every stage may use: errors and exit codes, atomic writes, the plugin API (records, writers,
plugins), spools, the instrument vocabulary. Imports nothing else of plankton_cli."""
