"""Key the ingested-event index by (team_id, uuid) instead of uuid alone.

Another team's event reusing a uuid is a different event: with the old key
it was skipped as a duplicate and lost. Django cannot migrate a primary key
to a composite one by itself, so the table is altered by hand and the model
state follows. ``(team_id, uuid)`` keeps every lookup the claim does on an
index (it gives both columns).
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("plugin_server", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    sql=(
                        "ALTER TABLE plugin_server_ingestedeventuuid"
                        " DROP CONSTRAINT plugin_server_ingestedeventuuid_pkey,"
                        " ADD CONSTRAINT plugin_server_ingestedeventuuid_pkey PRIMARY KEY (team_id, uuid)"
                    ),
                    # Back to uuid alone: only possible while no uuid is stored for two teams.
                    reverse_sql=(
                        "ALTER TABLE plugin_server_ingestedeventuuid"
                        " DROP CONSTRAINT plugin_server_ingestedeventuuid_pkey,"
                        " ADD CONSTRAINT plugin_server_ingestedeventuuid_pkey PRIMARY KEY (uuid)"
                    ),
                ),
            ],
            state_operations=[
                migrations.AddField(
                    model_name="ingestedeventuuid",
                    name="pk",
                    field=models.CompositePrimaryKey("team_id", "uuid", blank=True, editable=False, primary_key=True, serialize=False),
                ),
                migrations.AlterField(
                    model_name="ingestedeventuuid",
                    name="uuid",
                    field=models.UUIDField(),
                ),
            ],
        ),
    ]
