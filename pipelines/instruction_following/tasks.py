"""Base writing tasks for synthetic instruction-following prompts: task templates x topics, shipped and deterministic.

Kim et al. 2025 ("A Systematic Examination of Preference Learning through the Lens of Instruction-Following",
NAACL 2025) make 48,000 unique prompts by combining ordinary requests with verifiable constraints of the kinds
IFEval defines (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models"). The paper's own
list of base requests is not public, so this module ships ours (a choice): :data:`TEMPLATES` (writing tasks such as
"Write a short story about {topic}.") and :data:`TOPICS` (noun phrases, each of one kind and with a few related
words). A template names the kinds of topic it reads well with ("Explain {topic} to a ten-year-old." takes concepts,
"Write a product description for {topic}." takes objects); :data:`BASE_TASKS` is every fitting (template, topic)
pair, in a fixed order (templates in order, then topics in order).

A topic's ``words`` are single lower-case words that are related to it but are not its name; the prompt synthesiser
(:mod:`.synth`) hands them to the constraint samplers as the context's ``topic_words``, so keyword, keyword-frequency
and forbidden-word constraints name words that belong to the task ("Include the keywords "harbor" and "tides"").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BASE_TASKS", "KINDS", "TEMPLATES", "TOPICS", "BaseTask", "TaskTemplate", "Topic", "TopicKind"]

TopicKind = Literal["object", "concept", "place", "activity", "event", "issue"]
KINDS: tuple[TopicKind, ...] = ("object", "concept", "place", "activity", "event", "issue")


@dataclass(frozen=True)
class Topic:
    """A subject: ``name`` (a noun phrase, as it appears in the task), its ``kind`` and related ``words``."""

    name: str
    kind: TopicKind
    words: tuple[str, ...]


@dataclass(frozen=True)
class TaskTemplate:
    """A writing task with a ``{topic}`` slot, and the topic kinds it reads well with."""

    id: str
    text: str
    kinds: frozenset[TopicKind]

    def render(self, topic: Topic) -> str:
        return self.text.format(topic=topic.name)


@dataclass(frozen=True)
class BaseTask:
    """One base request: the rendered ``text``, the ``template`` id, the ``topic`` name and its related ``words``."""

    template: str
    topic: str
    kind: TopicKind
    text: str
    words: tuple[str, ...]


# One topic per line: "name | related words". Words are lower-case, alphabetic, at least three letters long.
_TOPIC_TABLE: dict[TopicKind, str] = {
    "object": """
        a reusable water bottle | hydration steel leak insulated refill
        a pair of noise-cancelling headphones | sound battery comfort travel silence
        an electric bicycle | battery pedal commute motor range
        a handmade ceramic mug | clay glaze kiln coffee potter
        a smart thermostat | temperature energy heating schedule savings
        a folding camping chair | outdoors portable fabric campfire lightweight
        a mechanical keyboard | keys typing switches clicky desk
        a solar-powered phone charger | sunlight battery panel hiking energy
        a cast-iron skillet | seasoning kitchen frying heat durable
        a vintage film camera | lens shutter negatives darkroom photographs
        a robot vacuum cleaner | dust floors sensors cleaning charging
        a wooden chess set | pieces board strategy knight handcrafted
        a waterproof hiking backpack | straps trail zipper storage rain
        an e-reader | books screen library reading battery
        a standing desk | posture height office ergonomic workday
        a self-watering plant pot | soil roots moisture reservoir leaves
        a pair of running shoes | cushioning stride laces marathon grip
        a portable espresso maker | coffee pressure beans travel crema
        a weighted blanket | sleep anxiety comfort cotton heavy
        a fountain pen | ink nib handwriting paper calligraphy
        a beginner's telescope | stars lens astronomy planets night
        a language-learning app | vocabulary lessons practice streak grammar
        a bird feeder | seeds garden sparrows squirrels winter
        an air purifier | filter allergies pollen breathing quiet
        a family board game | dice rules players strategy laughter
        a smartwatch | fitness heartbeat notifications wrist battery
        an inflatable kayak | paddle river current balance waterproof
    """,
    "concept": """
        photosynthesis | sunlight chlorophyll leaves oxygen glucose
        compound interest | savings growth rate investment principal
        vaccination | antibodies virus immunity cells protection
        black holes | gravity singularity horizon stars spacetime
        the water cycle | evaporation clouds rain condensation rivers
        supply and demand | price market buyers sellers equilibrium
        plate tectonics | earthquakes continents crust magma volcanoes
        machine learning | data algorithms training predictions patterns
        the theory of evolution | species adaptation selection fossils genes
        the architecture of the internet | packets routers servers protocols cables
        the greenhouse effect | carbon atmosphere warming heat emissions
        inflation | prices money wages purchasing economy
        the physics of flight | lift wings thrust drag altitude
        the placebo effect | belief medicine trials mind healing
        blockchain technology | ledger blocks cryptography network consensus
        the human heart | blood arteries pulse valves muscle
        renewable energy | solar wind turbines grid sustainable
        the scientific method | hypothesis experiment evidence observation theory
        probability | chance dice odds outcomes random
        the phases of the moon | crescent orbit sunlight lunar tides
        human memory | brain neurons recall forgetting sleep
        recycling | plastic waste bins materials reuse
        the immune system | cells infection defense antibodies fever
        gravity | mass attraction orbit falling newton
        democracy | voting citizens elections government rights
        opportunity cost | choices tradeoffs value decision resources
        the food chain | predators prey plants energy ecosystem
    """,
    "place": """
        a small coastal town | harbor fishermen lighthouse tides seagulls
        the Sahara desert | dunes camels heat oasis sand
        a public library | books librarian quiet shelves readers
        Kyoto in autumn | temples maple leaves gardens tea
        an abandoned amusement park | rollercoaster rust carousel tickets silence
        a night market in Taipei | stalls noodles lanterns crowds snacks
        a mountain cabin | snow fireplace pine wood trail
        a busy train station | platforms tickets commuters schedule departures
        the Amazon rainforest | canopy river jaguars rainfall species
        a neighborhood bakery | bread ovens flour pastries morning
        an old lighthouse | beacon waves keeper storm rocks
        a space station | orbit astronauts gravity modules earth
        a coral reef | fish anemones diving colors ocean
        a community garden | vegetables soil neighbors compost harvest
        Iceland in winter | glaciers aurora geysers volcanoes darkness
        a jazz club | saxophone stage rhythm audience midnight
        a hospital emergency room | nurses doctors patients triage urgency
        a medieval castle | towers knights walls moat banquet
        a rooftop garden in a big city | skyline plants bees concrete sunset
        a quiet fishing village | boats nets dawn harbor fishermen
        a science museum | exhibits fossils planetarium visitors experiments
        a farmers market | produce vendors honey baskets fresh
        the Arctic tundra | ice polar caribou permafrost wind
        a high school cafeteria | lunch trays students noise tables
        the canals of Venice | gondola bridges water palaces boats
        a city subway system | tunnels trains commuters platform rush
        a national park | hiking wildlife trails rangers campsite
    """,
    "activity": """
        learning to play the guitar | chords strings practice fingers melody
        urban gardening | balcony seeds containers herbs compost
        running a first marathon | training endurance miles pace finish
        baking sourdough bread | starter flour dough oven crust
        learning a new language | vocabulary grammar fluency practice accent
        birdwatching | binoculars species feathers migration notebook
        rock climbing | ropes harness grip wall summit
        keeping a journal | pages reflection habit thoughts writing
        meal prepping for the week | containers recipes groceries portions schedule
        starting a podcast | microphone episodes audience editing guests
        volunteering at an animal shelter | dogs cats adoption care kennels
        knitting a scarf | yarn needles stitches wool pattern
        learning to code | programming python bugs logic projects
        camping with kids | tent campfire marshmallows trail flashlight
        practicing meditation | breath calm focus mindfulness posture
        restoring old furniture | sanding varnish wood antique tools
        training a puppy | treats commands leash patience rewards
        learning to swim as an adult | pool strokes breathing fear lessons
        organizing a home office | desk cables shelves clutter productivity
        growing tomatoes | vines sunlight watering seeds harvest
        photographing wildlife | camera lens patience animals light
        composting at home | scraps worms soil bins decomposition
        planning a road trip | maps fuel playlist route motels
        cycling to work | helmet commute traffic bike lanes
        learning chess | openings pieces checkmate tactics board
        writing a novel | characters plot chapters drafts editing
        saving money on groceries | coupons budget receipts discounts bulk
    """,
    "event": """
        a power outage during a storm | candles darkness thunder flashlight neighbors
        the first day at a new job | coworkers nerves office introductions badge
        a surprise birthday party | cake balloons guests secret candles
        a delayed flight | airport gate boarding passengers waiting
        moving to a new city | boxes apartment neighbors streets unpacking
        a school science fair | projects judges posters volcano ribbons
        a family reunion | cousins picnic photos relatives memories
        a job interview | resume questions nerves handshake employer
        a wedding in the rain | umbrella vows guests dance celebration
        a lost wallet returned by a stranger | kindness cash cards honesty street
        a snow day | sledding snowman cocoa school blizzard
        a first solo trip abroad | passport hostel map adventure language
        a neighborhood block party | music grills neighbors games street
        a marathon finish | runners medal crowd exhaustion cheering
        graduation day | diploma caps gowns families ceremony
        a camping trip gone wrong | tent rain mosquitoes map fire
        a championship football game | stadium fans goal referee trophy
        the last day of summer camp | cabins friends campfire goodbyes lake
        an unexpected meeting with an old friend | memories coffee laughter surprise reunion
        a city-wide blackout | darkness candles silence generators stars
        a volcanic eruption | lava ash evacuation crater smoke
        a spelling bee | contestants words letters microphone judges
        a flooded basement | water pumps insurance damage buckets
        a total solar eclipse | shadow moon glasses crowd darkness
        a school talent show | stage performers audience applause judges
        a cooking competition | chefs timer ingredients judges plates
        the opening night of a play | actors curtain audience stage applause
    """,
    "issue": """
        remote work | commute home productivity meetings flexibility
        school uniforms | students dress rules identity cost
        a tax on plastic bags | waste turtles shoppers microplastics beaches
        a four-day work week | productivity burnout schedule employees leisure
        age limits for social media | screens anxiety friends likes privacy
        banning cars from city centers | pedestrians traffic pollution bikes shops
        homework for young children | schoolwork parents evenings learning pressure
        universal basic income | payments poverty taxes welfare jobs
        keeping animals in zoos | captivity conservation habitats species visitors
        artificial intelligence in classrooms | teachers students tutoring cheating tools
        fast fashion | clothing factories waste trends cheap
        more funding for space exploration | rockets budget mars science taxpayers
        lowering the voting age to sixteen | teenagers elections democracy maturity citizens
        abolishing tipping in restaurants | waiters wages service gratuity menus
        daylight saving time | clocks sleep mornings energy seasons
        standardized testing | exams scores students schools pressure
        free public transportation | buses trains fares commuters cities
        video games in the classroom | players skills screens strategy education
        stricter online privacy laws | data tracking cookies passwords consent
        working from cafes | laptops coffee noise wifi productivity
        banning single-use plastics | bags straws packaging waste alternatives
        year-round schooling | calendar vacations students learning breaks
        quiet hours in city neighborhoods | traffic sirens sleep health noise
        electric cars | batteries charging emissions range stations
        meat-free diets | vegetables protein climate health farming
        the four-year college degree | tuition debt careers campus skills
        smartphones in schools | students distraction rules classrooms safety
    """,
}


def _parse_topics() -> tuple[Topic, ...]:
    topics: list[Topic] = []
    for kind, table in _TOPIC_TABLE.items():
        for line in table.strip().splitlines():
            name, words = (part.strip() for part in line.split("|"))
            topics.append(Topic(name=name, kind=kind, words=tuple(words.split())))
    return tuple(topics)


#: Every topic, grouped by kind in the order of :data:`KINDS`.
TOPICS: tuple[Topic, ...] = _parse_topics()

_ALL: frozenset[TopicKind] = frozenset(KINDS)
_O, _C, _P, _A, _E, _I = "object", "concept", "place", "activity", "event", "issue"


def _tpl(template_id: str, text: str, *kinds: TopicKind) -> TaskTemplate:
    return TaskTemplate(template_id, text, frozenset(kinds) if kinds else _ALL)


#: The task templates (no kinds given = every kind).
TEMPLATES: tuple[TaskTemplate, ...] = (
    # creative writing
    _tpl("short_story", "Write a short story about {topic}.", _O, _P, _A, _E),
    _tpl("poem", "Write a poem about {topic}."),
    _tpl("limerick", "Write a limerick about {topic}.", _O, _P, _A, _E),
    _tpl("haiku", "Write a series of haiku about {topic}.", _O, _C, _P, _E),
    _tpl("song", "Write song lyrics about {topic}."),
    _tpl("rap", "Write a rap verse about {topic}."),
    _tpl("sonnet", "Write a sonnet about {topic}.", _O, _C, _P, _E),
    _tpl("fairy_tale", "Write a fairy tale that features {topic}.", _O, _P),
    _tpl("bedtime_story", "Write a bedtime story for a child about {topic}.", _O, _P, _E),
    _tpl("mystery", "Write a short mystery story set in {topic}.", _P),
    _tpl("screenplay", "Write the opening scene of a screenplay set in {topic}.", _P),
    _tpl("diary", "Write a diary entry about {topic}.", _P, _A, _E),
    _tpl("monologue", "Write a monologue from the point of view of someone living through {topic}.", _E),
    _tpl("dialogue", "Write a dialogue between two friends discussing {topic}."),
    _tpl("riddle", "Write a riddle whose answer is {topic}.", _O),
    _tpl("joke", "Write a joke about {topic}."),
    # explaining and teaching
    _tpl("explain_child", "Explain {topic} to a ten-year-old.", _C),
    _tpl("explain_beginner", "Explain {topic} to a complete beginner.", _C),
    _tpl("explain_analogy", "Explain {topic} using an everyday analogy.", _C),
    _tpl("summary", "Summarize the main ideas behind {topic}.", _C),
    _tpl("history", "Describe how our understanding of {topic} developed over time.", _C),
    _tpl("encyclopedia", "Write an encyclopedia-style entry about {topic}.", _O, _C, _P),
    _tpl("faq", "Write a FAQ page about {topic}.", _O, _C, _A),
    _tpl("guide", "Write a step-by-step guide to {topic}.", _A),
    _tpl("tips", "Give practical tips to someone who is new to {topic}.", _A),
    _tpl("lesson_plan", "Write a lesson plan for teaching {topic}.", _C, _A),
    _tpl("quiz", "Write a short quiz about {topic}.", _C, _P),
    _tpl("misconceptions", "List common misconceptions about {topic}.", _C, _A, _I),
    _tpl("thread", "Write a thread of short social media posts explaining {topic}.", _C),
    _tpl("describe_unseen", "Describe {topic} to someone who has never seen it.", _O, _P),
    # opinion and argument
    _tpl("essay", "Write an essay about {topic}.", _C, _A, _I),
    _tpl("persuasive", "Write a persuasive essay in favour of {topic}.", _I),
    _tpl("for_against", "Write a balanced argument for and against {topic}.", _I),
    _tpl("pros_cons", "Write a list of pros and cons of {topic}.", _O, _A, _I),
    _tpl("letter_editor", "Write a letter to the editor of a local newspaper about {topic}.", _E, _I),
    _tpl("speech", "Write a short speech about {topic}.", _C, _E, _I),
    _tpl("documentary_review", "Write a review of a documentary about {topic}.", _C, _P, _I),
    # business and everyday communication
    _tpl("product_description", "Write a product description for {topic}.", _O),
    _tpl("advertisement", "Write an advertisement for {topic}.", _O, _P),
    _tpl("customer_review", "Write a customer review of {topic}.", _O),
    _tpl("visit_review", "Write a review of a visit to {topic}.", _P),
    _tpl("user_manual", "Write a section of the user manual for {topic}.", _O),
    _tpl("startup_pitch", "Write a startup pitch built around {topic}.", _O, _A),
    _tpl("press_release", "Write a press release about {topic}.", _O, _E),
    _tpl("email_colleague", "Draft an email to a colleague about {topic}.", _C, _A, _E, _I),
    _tpl("memo", "Write a memo to your team about {topic}.", _E, _I),
    _tpl("cover_letter", "Write a cover letter for a job that involves {topic}.", _A),
    _tpl("interview", "Write an interview with an expert on {topic}.", _C, _A, _I),
    _tpl("blog_post", "Write a blog post about {topic}."),
    _tpl("social_post", "Write a social media post about {topic}."),
    _tpl("news_report", "Write a news report about {topic}.", _E),
    _tpl("travel_guide", "Write a travel guide entry for {topic}.", _P),
    _tpl("postcard", "Write a postcard from {topic}.", _P),
    _tpl("pen_pal", "Write a letter to a pen pal describing {topic}.", _P, _A, _E),
    _tpl("future_self", "Write a letter to your future self about {topic}.", _A, _E, _I),
    _tpl("encouragement", "Write an encouraging message for a friend who is nervous about {topic}.", _A, _E),
    _tpl("recommendation", "Recommend {topic} to a friend who has never tried it.", _A),
    _tpl("complaint", "Write a complaint letter about {topic}.", _O),
)


def _base_tasks() -> tuple[BaseTask, ...]:
    return tuple(
        BaseTask(template=t.id, topic=topic.name, kind=topic.kind, text=t.render(topic), words=topic.words)
        for t in TEMPLATES
        for topic in TOPICS
        if topic.kind in t.kinds
    )


#: Every fitting (template, topic) pair, templates in order, then topics in order.
BASE_TASKS: tuple[BaseTask, ...] = _base_tasks()
