"""The sweep service's durable store: SQLAlchemy models (`models`) and Alembic migrations
(`database`), the status machine (`status_machine`), sweep and trial queries (`sweep_queries`,
`trial_queries`), the transactions they write in (`transactions`), pages (`paging`), and the
driver's side of it (`sweep_store`), which keeps a running sweep's best (`best`)."""
