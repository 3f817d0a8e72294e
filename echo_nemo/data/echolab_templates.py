"""The echo-lab problem types (registered into `echolab_program.TEMPLATES`) and background prose.

Each template draws numbers from `ctx`, writes a GSM8K-style question, and builds the
solution program with `Solution.given` / `Solution.step`. It returns
(question, solution, answer quantity, conclusion with ``{ans}``). Numbers that would give
a fraction or a negative raise `Reject` inside `step`, and the generator samples again.
"""

from __future__ import annotations

import random

from echo_nemo.data.echolab_program import Ctx, Q, Reject, Solution, template

NAMES = [
    ("Sam", "he", "his"), ("Mia", "she", "her"), ("Leo", "he", "his"), ("Ava", "she", "her"),
    ("Ben", "he", "his"), ("Zoe", "she", "her"), ("Max", "he", "his"), ("Lily", "she", "her"),
    ("Tom", "he", "his"), ("Emma", "she", "her"), ("Jack", "he", "his"), ("Nora", "she", "her"),
]
ITEMS = ["apples", "pencils", "stickers", "cookies", "books", "marbles", "cards", "toys", "shells", "balloons"]
PRICED = ["notebooks", "pens", "apples", "sandwiches", "tickets", "candles", "cups", "hats"]


def _who(ctx: Ctx) -> tuple[str, str, str]:
    return ctx.pick(NAMES)


def _two(ctx: Ctx) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    a, b = ctx.sample(NAMES, 2)
    return a, b


# ----------------------------------------------------------------------------- purchases
@template("purchase", 1)
def purchase(ctx: Ctx):
    (name, _, _), item = _who(ctx), ctx.pick(PRICED)
    s = Solution()
    n, p = s.given(f"number_of_{item}", ctx.num()), s.given(f"price_per_{item[:-1]}", ctx.num(1))
    total = s.step("total_cost", n * p, f"The {item} cost", "dollars")
    q = f"{name} buys {int(n)} {item}. Each costs ${int(p)}. How much does {name} spend in dollars?"
    return q, s, total, f"{name} spends {{ans}} dollars"


@template("purchase_change", 2)
def purchase_change(ctx: Ctx):
    (name, he, _), item = _who(ctx), ctx.pick(PRICED)
    s = Solution()
    n, p = ctx.num(2, 10), ctx.num(1, 10)
    nq, pq = s.given(f"number_of_{item}", n), s.given(f"price_per_{item[:-1]}", p)
    paid = s.given("money_paid", n * p + ctx.num(1))
    cost = s.step("total_cost", nq * pq, f"The {item} cost", "dollars")
    change = s.step("change", paid - cost, "The change is", "dollars")
    q = (f"{name} buys {n} {item} at ${p} each and pays with ${int(paid)}. "
         f"How much change does {he} get in dollars?")
    return q, s, change, f"{name} gets {{ans}} dollars in change"


@template("two_items", 3)
def two_items(ctx: Ctx):
    (name, he, _), (a, b) = _who(ctx), ctx.sample(PRICED, 2)
    s = Solution()
    na, pa = s.given(f"number_of_{a}", ctx.num(2, 10)), s.given(f"price_per_{a[:-1]}", ctx.num(1, 10))
    nb, pb = s.given(f"number_of_{b}", ctx.num(2, 10)), s.given(f"price_per_{b[:-1]}", ctx.num(1, 10))
    ca = s.step(f"cost_of_{a}", na * pa, f"The {a} cost", "dollars")
    cb = s.step(f"cost_of_{b}", nb * pb, f"The {b} cost", "dollars")
    total = s.step("total_cost", ca + cb, "In total that is", "dollars")
    q = (f"{name} buys {int(na)} {a} for ${int(pa)} each and {int(nb)} {b} for ${int(pb)} each. "
         f"How much does {he} spend in total?")
    return q, s, total, f"{name} spends {{ans}} dollars in total"


@template("shopping_budget", 4)
def shopping_budget(ctx: Ctx):
    (name, he, _), (a, b) = _who(ctx), ctx.sample(PRICED, 2)
    s = Solution()
    na, pa, nb, pb = ctx.num(2, 6), ctx.num(1, 8), ctx.num(2, 6), ctx.num(1, 8)
    money = s.given("money", na * pa + nb * pb + ctx.num(0))
    qa, qpa = s.given(f"number_of_{a}", na), s.given(f"price_per_{a[:-1]}", pa)
    qb, qpb = s.given(f"number_of_{b}", nb), s.given(f"price_per_{b[:-1]}", pb)
    ca = s.step(f"cost_of_{a}", qa * qpa, f"The {a} cost", "dollars")
    cb = s.step(f"cost_of_{b}", qb * qpb, f"The {b} cost", "dollars")
    spent = s.step("money_spent", ca + cb, f"Together {he} spends", "dollars")
    left = s.step("money_left", money - spent, "The money left is", "dollars")
    q = (f"{name} has ${int(money)}. {he.capitalize()} buys {na} {a} at ${pa} each and {nb} {b} "
         f"at ${pb} each. How much money does {he} have left?")
    return q, s, left, f"{name} has {{ans}} dollars left"


@template("shopping_list", (1, 5))
def shopping_list(ctx: Ctx):
    """k priced items: k products, a sum when k > 1, and maybe a delivery fee (1-5 steps)."""
    (name, he, _) = _who(ctx)
    k = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3}[ctx.steps]
    extra = ctx.steps in (2, 4, 5)  # a flat delivery fee adds one step
    items = ctx.sample(PRICED, k)
    s = Solution()
    costs: list[Q] = []
    parts = []
    for it in items:
        n, p = s.given(f"number_of_{it}", ctx.num(2, 9)), s.given(f"price_per_{it[:-1]}", ctx.num(1, 9))
        costs.append(s.step(f"cost_of_{it}", n * p, f"The {it} cost", "dollars"))
        parts.append(f"{int(n)} {it} at ${int(p)} each")
    total = costs[0]
    if k > 1:
        expr = costs[0]
        for c in costs[1:]:
            expr = expr + c
        total = s.step("total_cost", expr, "The items cost", "dollars")
    fee_txt = ""
    if extra:
        fee = s.given("delivery_fee", ctx.num(1, 9))
        total = s.step("total_with_delivery", total + fee, "With delivery the bill is", "dollars")
        fee_txt = f" Delivery costs ${int(fee)}."
    q = f"{name} orders {', '.join(parts[:-1])}{' and ' if k > 1 else ''}{parts[-1]}.{fee_txt} How much does {he} pay?"
    return q, s, total, f"{name} pays {{ans}} dollars"


# ----------------------------------------------------------------------------- rates and time
@template("speed_distance", 1)
def speed_distance(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    v, h = s.given("speed", ctx.num(2)), s.given("hours", ctx.num(2, 10))
    d = s.step("distance", v * h, f"{name} travels", "miles")
    q = f"{name} rides a bike at {int(v)} miles per hour for {int(h)} hours. How many miles does {he} ride?"
    return q, s, d, f"{name} rides {{ans}} miles"


@template("time_from_distance", 1)
def time_from_distance(ctx: Ctx):
    (name, he, _) = _who(ctx)
    v, h = ctx.num(2), ctx.num(2, 10)
    s = Solution()
    d, vq = s.given("distance", v * h), s.given("speed", v)
    t = s.step("hours", d / vq, "The trip takes", "hours")
    q = f"{name} walks {v * h} miles at {v} miles per hour. How many hours does {he} walk?"
    return q, s, t, f"{name} walks for {{ans}} hours"


@template("round_trip", 3)
def round_trip(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    v1, h1 = s.given("speed_there", ctx.num(2)), s.given("hours_there", ctx.num(2, 6))
    v2, h2 = s.given("speed_back", ctx.num(2)), s.given("hours_back", ctx.num(2, 6))
    d1 = s.step("distance_there", v1 * h1, "The way there is", "miles")
    d2 = s.step("distance_back", v2 * h2, "The way back is", "miles")
    tot = s.step("total_distance", d1 + d2, "The whole trip is", "miles")
    q = (f"{name} drives {int(h1)} hours at {int(v1)} miles per hour, then comes back driving "
         f"{int(h2)} hours at {int(v2)} miles per hour. How many miles does {he} drive in all?")
    return q, s, tot, f"{name} drives {{ans}} miles"


@template("hourly_wage", 2)
def hourly_wage(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    w, h, d = s.given("pay_per_hour", ctx.num(2)), s.given("hours_per_day", ctx.num(2, 8)), s.given("days", ctx.num(2, 7))
    daily = s.step("pay_per_day", w * h, f"Each day {he} earns", "dollars")
    total = s.step("total_pay", daily * d, f"Over {int(d)} days {he} earns", "dollars")
    q = (f"{name} earns ${int(w)} an hour and works {int(h)} hours a day. "
         f"How much does {he} earn in {int(d)} days?")
    return q, s, total, f"{name} earns {{ans}} dollars"


@template("earn_spend_save", 3)
def earn_spend_save(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    w, n = ctx.num(2), ctx.num(2, 8)
    earn, weeks = s.given("earned_per_week", w), s.given("weeks", n)
    spend = s.given("spent_per_week", ctx.num(1, w))
    total = s.step("total_earned", earn * weeks, f"{name} earns", "dollars")
    spent = s.step("total_spent", spend * weeks, f"{he.capitalize()} spends", "dollars")
    saved = s.step("total_saved", total - spent, f"{he.capitalize()} saves", "dollars")
    q = (f"{name} earns ${w} a week and spends ${int(spend)} of it each week. "
         f"How much does {he} save in {n} weeks?")
    return q, s, saved, f"{name} saves {{ans}} dollars"


@template("saving_weeks", 2)
def saving_weeks(ctx: Ctx):
    (name, he, _), item = _who(ctx), ctx.pick(["bike", "game", "guitar", "scooter", "tent"])
    per, weeks, has = ctx.num(2), ctx.num(2, 10), ctx.num(1)
    s = Solution()
    price, have, save = s.given("price", has + per * weeks), s.given("money_saved", has), s.given("saved_per_week", per)
    need = s.step("money_needed", price - have, f"{name} still needs", "dollars")
    w = s.step("weeks", need / save, "That takes", "weeks")
    q = (f"{name} wants a {item} that costs ${int(price)}. {he.capitalize()} has ${has} and saves "
         f"${per} each week. How many weeks until {he} can buy it?")
    return q, s, w, f"{name} needs {{ans}} weeks"


@template("temperature", 3)
def temperature(ctx: Ctx):
    s = Solution()
    t0, r, h = s.given("start_temperature", ctx.num(2)), s.given("rise_per_hour", ctx.num(1, 6)), s.given("hours", ctx.num(2, 6))
    drop = s.given("evening_drop", ctx.num(1))
    rise = s.step("total_rise", r * h, "The temperature rises by", "degrees")
    high = s.step("highest", t0 + rise, "It reaches", "degrees")
    end = s.step("evening_temperature", high - drop, "In the evening it is", "degrees")
    q = (f"In the morning it is {int(t0)} degrees. The temperature rises {int(r)} degrees each hour "
         f"for {int(h)} hours, then drops {int(drop)} degrees in the evening. What is the evening temperature?")
    return q, s, end, "the evening temperature is {ans} degrees"


@template("plant_growth", 2)
def plant_growth(ctx: Ctx):
    (name, _, his) = _who(ctx)
    s = Solution()
    h0, g, w = s.given("start_height", ctx.num(2)), s.given("growth_per_week", ctx.num(1, 9)), s.given("weeks", ctx.num(2, 8))
    grow = s.step("growth", g * w, "The plant grows", "centimeters")
    h = s.step("final_height", h0 + grow, "Its height is", "centimeters")
    q = (f"{name}'s plant is {int(h0)} centimeters tall and grows {int(g)} centimeters every week. "
         f"How tall is {his} plant after {int(w)} weeks?")
    return q, s, h, f"{name}'s plant is {{ans}} centimeters tall"


# ----------------------------------------------------------------------------- ages
@template("ages_future", 2)
def ages_future(ctx: Ctx):
    (a, _, _), (b, _, _) = _two(ctx)
    s = Solution()
    x, k, t = s.given(f"{a.lower()}_age", ctx.num(2, 12)), s.given("times_older", ctx.num(2, 4)), s.given("years_later", ctx.num(2, 10))
    y = s.step(f"{b.lower()}_age", x * k, f"{b} is now", "years old")
    fut = s.step(f"{b.lower()}_future_age", y + t, f"In {int(t)} years {b} will be", "years old")
    q = f"{a} is {int(x)} years old. {b} is {int(k)} times as old as {a}. How old will {b} be in {int(t)} years?"
    return q, s, fut, f"{b} will be {{ans}} years old"


@template("ages_sum", 3)
def ages_sum(ctx: Ctx):
    (a, _, _), (b, _, _) = _two(ctx)
    s = Solution()
    x, d = s.given(f"{a.lower()}_age", ctx.num(2, 15)), s.given("difference", ctx.num(1, 9))
    y = s.step(f"{b.lower()}_age", x + d, f"{b} is", "years old")
    tw = s.step("twin_total", y * 2, f"{b} and {b}'s twin together are", "years old")
    tot = s.step("total_age", x + tw, "All three together are", "years old")
    q = (f"{a} is {int(x)} years old. {b} is {int(d)} years older than {a}, and {b} has a twin. "
         f"What is the sum of the ages of {a}, {b} and {b}'s twin?")
    return q, s, tot, "the sum of their ages is {ans}"


@template("ages_past", 1)
def ages_past(ctx: Ctx):
    (a, he, _) = _who(ctx)
    s = Solution()
    x, t = ctx.num(5), ctx.num(1, 4)
    age, ago = s.given("age_now", x), s.given("years_ago", t)
    past = s.step("age_then", age - ago, f"{t} years ago {he} was", "years old")
    q = f"{a} is {x} years old. How old was {a} {t} years ago?"
    return q, s, past, f"{a} was {{ans}} years old"


# ----------------------------------------------------------------------------- fractions, percents, ratios
@template("fraction_left", 2)
def fraction_left(ctx: Ctx):
    (name, he, _), item = _who(ctx), ctx.pick(ITEMS)
    d = ctx.pick([2, 3, 4, 5])
    s = Solution()
    n, dq = s.given(f"total_{item}", d * ctx.num(1, 10)), s.given("parts", d)
    given = s.step(f"{item}_given_away", n / dq, f"{name} gives away", item)
    left = s.step(f"{item}_left", n - given, f"{he.capitalize()} keeps", item)
    q = f"{name} has {int(n)} {item}. {he.capitalize()} gives away 1/{d} of them. How many {item} does {he} have left?"
    return q, s, left, f"{name} has {{ans}} {item} left"


@template("fraction_of", 1)
def fraction_of(ctx: Ctx):
    (name, _, _) = _who(ctx)
    d, m = ctx.pick([2, 3, 4]), ctx.pick([1, 2, 3])
    if m >= d:
        raise Reject("improper fraction")
    s = Solution()
    n = d * ctx.num(1, 10)
    total, num, den = s.given("students", n), s.given("numerator", m), s.given("denominator", d)
    part = s.step("students_walking", total * num / den, "The number who walk is", "students")
    q = f"{name}'s class has {n} students and {m}/{d} of them walk to school. How many students walk to school?"
    return q, s, part, "{ans} students walk to school"


@template("percent_discount", 2)
def percent_discount(ctx: Ctx):
    (name, _, _), item = _who(ctx), ctx.pick(["jacket", "lamp", "game", "backpack", "watch"])
    pct = ctx.pick([10, 20, 25, 50])
    s = Solution()
    price, pq = s.given("price", ctx.num(2) * 20), s.given("discount_percent", pct)
    off = s.step("discount", price * pq / 100, "The discount is", "dollars")
    pay = s.step("price_paid", price - off, f"{name} pays", "dollars")
    q = f"A {item} costs ${int(price)}. It is on sale for {pct}% off. How much does {name} pay for it?"
    return q, s, pay, f"{name} pays {{ans}} dollars"


@template("percent_tip", 2)
def percent_tip(ctx: Ctx):
    (name, he, _) = _who(ctx)
    pct = ctx.pick([10, 20, 25])
    s = Solution()
    bill, pq = s.given("bill", ctx.num(2) * 20), s.given("tip_percent", pct)
    tip = s.step("tip", bill * pq / 100, "The tip is", "dollars")
    tot = s.step("total_paid", bill + tip, "The total is", "dollars")
    q = f"{name}'s dinner costs ${int(bill)} and {he} leaves a {pct}% tip. How much does {he} pay in total?"
    return q, s, tot, f"{name} pays {{ans}} dollars"


@template("percent_of", 1)
def percent_of(ctx: Ctx):
    pct = ctx.pick([10, 20, 25, 50, 75])
    s = Solution()
    n, pq = s.given("total_fruit", ctx.num(1) * 20), s.given("percent_apples", pct)
    part = s.step("apples", n * pq / 100, "The number of apples is", "")
    q = f"A basket holds {int(n)} pieces of fruit and {pct}% of them are apples. How many apples are in the basket?"
    return q, s, part, "there are {ans} apples"


@template("ratio_split", 2)
def ratio_split(ctx: Ctx):
    (a, _, _), (b, _, _) = _two(ctx)
    ra, rb = ctx.num(1, 5), ctx.num(1, 5)
    s = Solution()
    total, qa, qb = s.given("total_money", (ra + rb) * ctx.num(1, 10)), s.given(f"{a.lower()}_parts", ra), s.given(f"{b.lower()}_parts", rb)
    part = s.step("one_part", total / (qa + qb), "One part is", "dollars")
    share = s.step(f"{b.lower()}_share", part * qb, f"{b} gets", "dollars")
    q = f"{a} and {b} share ${int(total)} in the ratio {ra}:{rb}. How much money does {b} get?"
    return q, s, share, f"{b} gets {{ans}} dollars"


@template("average_scores", 2)
def average_scores(ctx: Ctx):
    (name, he, his) = _who(ctx)
    a, b = ctx.num(2), ctx.num(2)
    c = 3 * ctx.num(2) - a - b
    s = Solution()
    x, y, z = s.given("first_score", a), s.given("second_score", b), s.given("third_score", c)
    tot = s.step("total_score", x + y + z, f"{his.capitalize()} scores add up to", "points")
    avg = s.step("average", tot / 3, f"{his.capitalize()} average is", "points")
    q = f"{name} scores {a}, {b} and {c} points in three games. What is {his} average score?"
    return q, s, avg, f"{name}'s average is {{ans}} points"


# ----------------------------------------------------------------------------- units
@template("meters_to_cm", 1)
def meters_to_cm(ctx: Ctx):
    (name, _, _) = _who(ctx)
    s = Solution()
    m, c = s.given("meters", ctx.num(1)), s.given("centimeters_per_meter", 100)
    cm = s.step("centimeters", m * c, "The rope is", "centimeters")
    q = f"{name} has a rope that is {int(m)} meters long. How many centimeters long is the rope?"
    return q, s, cm, "the rope is {ans} centimeters long"


@template("hours_minutes", 2)
def hours_minutes(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    h, mn, per = s.given("hours", ctx.num(1, 5)), s.given("extra_minutes", ctx.num(1, 59)), s.given("minutes_per_hour", 60)
    hm = s.step("minutes_from_hours", h * per, f"{int(h)} hours are", "minutes")
    tot = s.step("total_minutes", hm + mn, "In all that is", "minutes")
    q = f"{name} reads for {int(h)} hours and {int(mn)} minutes. How many minutes does {he} read?"
    return q, s, tot, f"{name} reads for {{ans}} minutes"


@template("weeks_days", 2)
def weeks_days(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    w, d, per = s.given("weeks", ctx.num(1, 9)), s.given("extra_days", ctx.num(1, 6)), s.given("days_per_week", 7)
    wd = s.step("days_from_weeks", w * per, f"{int(w)} weeks are", "days")
    tot = s.step("total_days", wd + d, "In all that is", "days")
    q = f"{name} goes on a trip for {int(w)} weeks and {int(d)} days. How many days is {he} away?"
    return q, s, tot, f"{name} is away for {{ans}} days"


@template("dozens", 2)
def dozens(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    n, per = s.given("dozens", ctx.num(1, 6)), s.given("eggs_per_dozen", 12)
    used = s.given("eggs_used", ctx.num(1, 12))
    eggs = s.step("total_eggs", n * per, f"{name} buys", "eggs")
    left = s.step("eggs_left", eggs - used, f"{he.capitalize()} has", "eggs left")
    q = f"{name} buys {int(n)} dozen eggs and uses {int(used)} eggs for a cake. How many eggs are left?"
    return q, s, left, "there are {ans} eggs left"


@template("liters_to_cups", 2)
def liters_to_cups(ctx: Ctx):
    (name, he, _) = _who(ctx)
    size = ctx.pick([100, 200, 250, 500])
    s = Solution()
    lit, ml, cup = s.given("liters", ctx.num(1, 6)), s.given("milliliters_per_liter", 1000), s.given("cup_size", size)
    tot = s.step("milliliters", lit * ml, "The juice is", "milliliters")
    cups = s.step("cups", tot / cup, f"{he.capitalize()} can fill", "cups")
    q = f"{name} has {int(lit)} liters of juice. How many {size}-milliliter cups can {he} fill?"
    return q, s, cups, f"{name} can fill {{ans}} cups"


# ----------------------------------------------------------------------------- sharing and grouping
@template("share_equally", 1)
def share_equally(ctx: Ctx):
    (name, _, _), item = _who(ctx), ctx.pick(ITEMS)
    k = ctx.num(2, 8)
    s = Solution()
    n, f = s.given(f"total_{item}", k * ctx.num(1, 10)), s.given("friends", k)
    each = s.step(f"{item}_each", n / f, "Each friend gets", item)
    q = f"{name} shares {int(n)} {item} equally among {k} friends. How many {item} does each friend get?"
    return q, s, each, f"each friend gets {{ans}} {item}"


@template("keep_and_share", 2)
def keep_and_share(ctx: Ctx):
    (name, he, _), item = _who(ctx), ctx.pick(ITEMS)
    k, keep = ctx.num(2, 6), ctx.num(1, 10)
    s = Solution()
    n, kq, f = s.given(f"total_{item}", keep + k * ctx.num(1, 9)), s.given(f"{item}_kept", keep), s.given("friends", k)
    rest = s.step(f"{item}_to_share", n - kq, f"{name} shares", item)
    each = s.step(f"{item}_each", rest / f, "Each friend gets", item)
    q = (f"{name} has {int(n)} {item}. {he.capitalize()} keeps {keep} and shares the rest equally "
         f"among {k} friends. How many {item} does each friend get?")
    return q, s, each, f"each friend gets {{ans}} {item}"


@template("boxes_packing", 2)
def boxes_packing(ctx: Ctx):
    (name, he, _), item = _who(ctx), ctx.pick(ITEMS)
    s = Solution()
    b, per, extra = s.given("boxes", ctx.num(2, 9)), s.given(f"{item}_per_box", ctx.num(2, 12)), s.given(f"loose_{item}", ctx.num(1, 9))
    boxed = s.step(f"{item}_in_boxes", b * per, "The boxes hold", item)
    tot = s.step(f"total_{item}", boxed + extra, "In total there are", item)
    q = (f"{name} has {int(b)} boxes with {int(per)} {item} in each box and {int(extra)} loose {item}. "
         f"How many {item} does {he} have?")
    return q, s, tot, f"{name} has {{ans}} {item}"


@template("garden_rows", 2)
def garden_rows(ctx: Ctx):
    (name, _, _) = _who(ctx)
    s = Solution()
    r, per, dead = s.given("rows", ctx.num(2, 9)), s.given("plants_per_row", ctx.num(2, 12)), s.given("plants_dead", ctx.num(1, 9))
    tot = s.step("plants", r * per, f"{name} plants", "plants")
    alive = s.step("plants_alive", tot - dead, "The plants still growing are", "")
    q = (f"{name} plants {int(r)} rows of tomatoes with {int(per)} plants in each row. "
         f"{int(dead)} plants die. How many plants are still growing?")
    return q, s, alive, "{ans} plants are still growing"


@template("bake_sale", 3)
def bake_sale(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    t, per = s.given("trays", ctx.num(2, 6)), s.given("cookies_per_tray", ctx.num(2, 12))
    price = s.given("price_per_cookie", ctx.num(1, 5))
    eaten = s.given("cookies_eaten", ctx.num(1, 6))
    baked = s.step("cookies_baked", t * per, f"{name} bakes", "cookies")
    sold = s.step("cookies_sold", baked - eaten, f"{he.capitalize()} sells", "cookies")
    money = s.step("money_made", sold * price, f"{he.capitalize()} makes", "dollars")
    q = (f"{name} bakes {int(t)} trays of {int(per)} cookies. {he.capitalize()} eats {int(eaten)} and sells the rest "
         f"for ${int(price)} each. How much money does {he} make?")
    return q, s, money, f"{name} makes {{ans}} dollars"


@template("classroom", 2)
def classroom(ctx: Ctx):
    s = Solution()
    per_table, tables = ctx.num(2, 6), ctx.num(2, 8)
    t, p, absent = s.given("tables", tables), s.given("students_per_table", per_table), s.given("students_absent", ctx.num(1, 5))
    tot = s.step("students", t * p, "The class has", "students")
    here = s.step("students_present", tot - absent, "Today there are", "students")
    q = (f"A class sits at {tables} tables with {per_table} students at each table. {int(absent)} students "
         "are absent today. How many students are in class today?")
    return q, s, here, "{ans} students are in class"


@template("reading_pages", 2)
def reading_pages(ctx: Ctx):
    (name, he, _) = _who(ctx)
    per, d = ctx.num(2, 12), ctx.num(2, 7)
    s = Solution()
    pages, pq, dq = s.given("book_pages", per * d + ctx.num(1)), s.given("pages_per_day", per), s.given("days", d)
    read = s.step("pages_read", pq * dq, f"{name} reads", "pages")
    left = s.step("pages_left", pages - read, "The pages left are", "")
    q = (f"{name}'s book has {int(pages)} pages. {he.capitalize()} reads {per} pages a day for {d} days. "
         "How many pages are left?")
    return q, s, left, "{ans} pages are left"


@template("area_rectangle", 1)
def area_rectangle(ctx: Ctx):
    s = Solution()
    ln, w = s.given("length", ctx.num(2)), s.given("width", ctx.num(2))
    a = s.step("area", ln * w, "The area is", "square meters")
    q = f"A rug is {int(ln)} meters long and {int(w)} meters wide. What is its area in square meters?"
    return q, s, a, "the area is {ans} square meters"


@template("fence_cost", (1, 2))
def fence_cost(ctx: Ctx):
    s = Solution()
    ln, w = s.given("length", ctx.num(2)), s.given("width", ctx.num(2))
    per = s.step("perimeter", 2 * (ln + w), "The perimeter is", "meters")
    if ctx.steps == 1:
        q = f"A garden is {int(ln)} meters long and {int(w)} meters wide. How many meters of fence go around it?"
        return q, s, per, "the fence is {ans} meters long"
    c = s.given("cost_per_meter", ctx.num(1, 5))
    cost = s.step("fence_cost", per * c, "The fence costs", "dollars")
    q = (f"A garden is {int(ln)} meters long and {int(w)} meters wide. Fencing costs ${int(c)} per meter. "
         "How much does it cost to fence the garden?")
    return q, s, cost, "the fence costs {ans} dollars"


# ----------------------------------------------------------------------------- chains of events
@template("bus_stops", (1, 5))
def bus_stops(ctx: Ctx):
    s = Solution()
    cur = s.given("passengers", ctx.num(5))
    parts = [f"A bus leaves with {int(cur)} passengers."]
    for i in range(1, ctx.steps + 1):
        off = s.given(f"off_at_stop_{i}", ctx.num(1, max(1, int(cur))))
        on = s.given(f"on_at_stop_{i}", ctx.num(1, 9))
        cur = s.step(f"after_stop_{i}", cur - off + on, f"After stop {i} there are", "passengers")
        parts.append(f"At stop {i}, {int(off)} get off and {int(on)} get on.")
    q = " ".join(parts) + " How many passengers are on the bus now?"
    return q, s, cur, "there are {ans} passengers on the bus"


_EVENTS = [
    ("finds", "+", "{n} finds {k} more"),
    ("gives", "-", "{n} gives {k} to a friend"),
    ("loses", "-", "{n} loses {k}"),
    ("gets", "+", "{m}'s mom gives {o} {k} more"),
    ("doubles", "*", "{n} doubles {p} collection"),
]


@template("collection_chain", (1, 5))
def collection_chain(ctx: Ctx):
    """A collection changes `steps` times: finds, gives away, loses, doubles."""
    (name, he, his), item = _who(ctx), ctx.pick(ITEMS)
    obj = "him" if he == "he" else "her"
    s = Solution()
    cur = s.given(f"{item}_at_start", ctx.num(2))
    parts = [f"{name} has {int(cur)} {item}."]
    for i in range(1, ctx.steps + 1):
        verb, op, phrase = ctx.pick(_EVENTS)
        if op == "*":
            if cur.value > ctx.max_number * 2:
                raise Reject("too large to double")
            new = cur * 2
            sentence = phrase.format(n=name if i == 1 else he.capitalize(), m=name, p=his, o=obj, k="")
        else:
            k = s.given(f"{item}_{verb}_{i}", ctx.num(1, max(1, ctx.max_number // 2)))
            new = cur + k if op == "+" else cur - k
            sentence = phrase.format(n=name if i == 1 else he.capitalize(), m=name, p=his, o=obj, k=int(k))
        cur = s.step(f"{item}_after_step_{i}", new, f"After that {he} has", item)
        parts.append(sentence + ".")
    q = " ".join(parts) + f" How many {item} does {name} have now?"
    return q, s, cur, f"{name} has {{ans}} {item}"


@template("store_inventory", (3, 5))
def store_inventory(ctx: Ctx):
    """Sales on several days and one delivery: steps-1 sale days then one delivery."""
    s = Solution()
    days = ["Monday", "Tuesday", "Wednesday", "Thursday"][: ctx.steps - 1]
    stock = s.given("shirts_in_stock", ctx.num(10) + ctx.num(10))
    cur = stock
    parts = [f"A store has {int(stock)} shirts."]
    for d in days:
        sold = s.given(f"sold_{d.lower()}", ctx.num(1, 9))
        cur = s.step(f"after_{d.lower()}", cur - sold, f"After {d} the store has", "shirts")
        parts.append(f"It sells {int(sold)} shirts on {d}.")
    deliv = s.given("delivered", ctx.num(2))
    cur = s.step("final_stock", cur + deliv, "After the delivery it has", "shirts")
    parts.append(f"Then {int(deliv)} new shirts arrive.")
    q = " ".join(parts) + " How many shirts does the store have now?"
    return q, s, cur, "the store has {ans} shirts"


@template("party_budget", 5)
def party_budget(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    guests, per_guest = ctx.num(2, 10), ctx.num(1, 5)
    cake, pct = ctx.num(2) , ctx.pick([10, 20, 50])
    budget = s.given("budget", guests * per_guest + cake + ctx.num(1) * 10)
    g, pg = s.given("guests", guests), s.given("snack_cost_per_guest", per_guest)
    c = s.given("cake_cost", cake * 10)
    p = s.given("percent_saved", pct)
    snacks = s.step("snack_cost", g * pg, "Snacks cost", "dollars")
    spent = s.step("total_cost", snacks + c, "Snacks and cake cost", "dollars")
    if spent.value > budget.value:
        raise Reject("over budget")
    left = s.step("money_left", budget - spent, "The money left is", "dollars")
    saved = s.step("money_saved", left * p / 100, f"{he.capitalize()} saves", "dollars")
    other = s.step("money_for_games", left - saved, "The money for games is", "dollars")
    q = (f"{name} has ${int(budget)} for a party. Snacks cost ${per_guest} per guest for {guests} guests and the cake "
         f"costs ${int(c)}. {he.capitalize()} saves {pct}% of what is left and spends the rest on games. "
         "How much does {he} spend on games?").replace("{he}", he)
    return q, s, other, f"{name} spends {{ans}} dollars on games"


@template("marbles_friends", 4)
def marbles_friends(ctx: Ctx):
    (a, _, _), (b, _, _) = _two(ctx)
    s = Solution()
    x, more, half = s.given(f"{a.lower()}_marbles", ctx.num(2)), s.given("more", ctx.num(1, 9)), s.given("parts", 2)
    y = s.step(f"{b.lower()}_marbles", x + more, f"{b} has", "marbles")
    z = s.step("carla_marbles", y / half, "Carla has", "marbles")
    ab = s.step("two_total", x + y, f"{a} and {b} have", "marbles")
    tot = s.step("total_marbles", ab + z, "All three have", "marbles")
    q = (f"{a} has {int(x)} marbles. {b} has {int(more)} more marbles than {a}. Carla has half as many "
         f"marbles as {b}. How many marbles do the three have in total?")
    return q, s, tot, "they have {ans} marbles in total"


@template("trip_fuel", 4)
def trip_fuel(ctx: Ctx):
    (name, he, _) = _who(ctx)
    s = Solution()
    mpg = ctx.num(2, 10)
    days, per_day = ctx.num(2, 5), mpg * ctx.num(1, 6)
    d, m, price = s.given("days", days), s.given("miles_per_day", per_day), s.given("price_per_gallon", ctx.num(2, 5))
    eff = s.given("miles_per_gallon", mpg)
    miles = s.step("total_miles", d * m, f"{name} drives", "miles")
    gallons = s.step("gallons", miles / eff, f"{he.capitalize()} uses", "gallons")
    cost = s.step("fuel_cost", gallons * price, "The fuel costs", "dollars")
    total = s.step("cost_per_trip_day", cost / d, "Per day that is", "dollars")
    q = (f"{name} drives {per_day} miles a day for {days} days. The car goes {mpg} miles per gallon and gas costs "
         f"${int(price)} a gallon. How much does {he} spend on gas per day?")
    return q, s, total, f"{name} spends {{ans}} dollars on gas per day"


# ----------------------------------------------------------------------------- background prose (FineMath stand-in)
def _p_multiply(r: random.Random, m: int) -> str:
    a, b = r.randint(2, 9), r.randint(2, 9)
    adds = " + ".join([str(a)] * b)
    return (f"Multiplication is repeated addition. To find ${a} \\times {b}$ we add {a} to itself {b} times: "
            f"${adds} = {a * b}$. So ${a} \\times {b} = {a * b}$, and by the commutative property "
            f"${b} \\times {a} = {a * b}$ as well.")


def _p_fraction(r: random.Random, m: int) -> str:
    d = r.choice([2, 3, 4, 5, 6])
    n = r.randint(1, d - 1)
    k = r.randint(2, 6)
    return (f"A fraction $\\frac{{{n}}}{{{d}}}$ means {n} of {d} equal parts. To take $\\frac{{{n}}}{{{d}}}$ of "
            f"{d * k}, divide by the denominator and multiply by the numerator: ${d * k} \\div {d} = {k}$ and "
            f"${k} \\times {n} = {k * n}$.")


def _p_percent(r: random.Random, m: int) -> str:
    p = r.choice([10, 20, 25, 50])
    n = r.randint(1, 10) * 20
    return (f"Percent means per hundred, so ${p}\\%$ is $\\frac{{{p}}}{{100}}$. For example, ${p}\\%$ of {n} is "
            f"$\\frac{{{p} \\times {n}}}{{100}} = {p * n // 100}$.")


def _p_perimeter(r: random.Random, m: int) -> str:
    length, w = r.randint(2, m), r.randint(2, m)
    return (f"The perimeter of a rectangle is the distance around it, $P = 2(l + w)$, and its area is "
            f"$A = l \\times w$. A rectangle with $l = {length}$ and $w = {w}$ has $P = 2({length} + {w}) = "
            f"{2 * (length + w)}$ and $A = {length} \\times {w} = {length * w}$.")


def _p_units(r: random.Random, m: int) -> str:
    h = r.randint(1, 9)
    return (f"There are 60 minutes in an hour and 24 hours in a day. To convert hours to minutes, multiply "
            f"by 60: {h} hours is ${h} \\times 60 = {h * 60}$ minutes.")


def _p_average(r: random.Random, m: int) -> str:
    xs = [r.randint(1, m) for _ in range(3)]
    t = sum(xs)
    t += (-t) % 3
    xs[2] = t - xs[0] - xs[1]
    return (f"The mean (average) of a list is its sum divided by how many numbers it has. The mean of "
            f"{xs[0]}, {xs[1]} and {xs[2]} is $\\frac{{{xs[0]} + {xs[1]} + {xs[2]}}}{{3}} = \\frac{{{t}}}{{3}} = {t // 3}$.")


def _p_order(r: random.Random, m: int) -> str:
    a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(2, 9)
    return (f"By the order of operations, multiplication comes before addition: ${a} + {b} \\times {c} = "
            f"{a} + {b * c} = {a + b * c}$, while $({a} + {b}) \\times {c} = {a + b} \\times {c} = {(a + b) * c}$.")


def _p_even(r: random.Random, m: int) -> str:
    n = r.randint(2, 50)
    kind = "even" if n % 2 == 0 else "odd"
    return (f"A whole number is even if it is divisible by 2 and odd otherwise. The number {n} is {kind}, "
            f"because ${n} = 2 \\times {n // 2} + {n % 2}$.")


def _p_equation(r: random.Random, m: int) -> str:
    x, a = r.randint(1, m), r.randint(1, m)
    return (f"To solve $x + {a} = {x + a}$, subtract {a} from both sides: $x = {x + a} - {a} = {x}$. "
            f"We can check the answer: ${x} + {a} = {x + a}$.")


PROSE = [_p_multiply, _p_fraction, _p_percent, _p_perimeter, _p_units, _p_average, _p_order, _p_even, _p_equation]
